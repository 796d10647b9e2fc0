//! A whole installation as rows, for moving it between backends
//! (`latchkey copy`) and for backups. Rows travel as they are stored: sealed
//! secrets and wrapped data keys stay sealed, so a copy never needs the
//! master key and never puts a secret in the clear anywhere.
//!
//! Both backends have the same tables and columns (each backend's migrations
//! say so); this module lists them once, with each column's kind, and each
//! backend converts between its own column types and [`Value`]. The row
//! numbers (`seq`, which PostgreSQL's events do not have) are not copied:
//! rows are written in `seq` order (events in id order, per tenant), so the
//! target numbers them in the same order.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use crate::{Result, Store, StoreError};

/// How a column is stored and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    OptText,
    Bool,
    Int,
    /// A timestamp, in whole milliseconds.
    Time,
    OptTime,
    Bytes,
    Json,
}

impl Kind {
    pub fn nullable(self) -> bool {
        matches!(self, Kind::OptText | Kind::OptTime)
    }
}

/// One stored value, independent of the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Bool(bool),
    Int(i64),
    Time(i64),
    Bytes(Vec<u8>),
    Json(serde_json::Value),
}

pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    /// The order rows are read and written in.
    pub order_by: &'static str,
}

impl Table {
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

use Kind::*;

/// Every table, parents before children (the order a copy writes them in).
pub const TABLES: &[Table] = &[
    Table {
        name: "meta",
        columns: &[("key", Text), ("value", Bytes)],
        order_by: "key",
    },
    Table {
        name: "master_keys",
        columns: &[
            ("id", Text),
            ("state", Text),
            ("key_check", Bytes),
            ("created_at", Time),
            ("retired_at", OptTime),
        ],
        order_by: "created_at, id",
    },
    Table {
        name: "tenants",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("is_operator", Bool),
            ("created_at", Time),
        ],
        order_by: "id",
    },
    Table {
        name: "tokens",
        columns: &[
            ("id", Text),
            ("tenant_id", Text),
            ("name", Text),
            ("role", Text),
            ("hash", Bytes),
            ("created_at", Time),
            ("created_by", Text),
            ("revoked_at", OptTime),
        ],
        order_by: "id",
    },
    Table {
        name: "credentials",
        columns: &[
            ("id", Text),
            ("tenant_id", Text),
            ("name", Text),
            ("description", Text),
            ("integration_id", Text),
            ("auth_type", Text),
            ("services", Json),
            ("scopes", Json),
            ("params", Json),
            ("secret_fields", Json),
            ("status", Text),
            ("status_message", OptText),
            ("checked_at", OptTime),
            ("version", Int),
            ("kek_id", Text),
            ("wrapped_dek", Bytes),
            ("created_at", Time),
            ("created_by", Text),
            ("updated_at", Time),
            ("updated_by", Text),
        ],
        order_by: "seq",
    },
    Table {
        name: "credential_secrets",
        columns: &[("credential_id", Text), ("field", Text), ("sealed", Bytes)],
        order_by: "credential_id, field",
    },
    Table {
        name: "services",
        columns: &[
            ("id", Text),
            ("tenant_id", Text),
            ("name", Text),
            ("role", Text),
            ("description", Text),
            ("integrations", Json),
            ("spec", Json),
            ("version", Int),
            ("created_at", Time),
            ("created_by", Text),
            ("updated_at", Time),
            ("updated_by", Text),
        ],
        order_by: "seq",
    },
    Table {
        name: "events",
        columns: &[
            ("id", Text),
            ("tenant_id", Text),
            ("credential_id", Text),
            ("kind", Text),
            ("valid_request", Bool),
            ("app_user_id", OptText),
            ("user_id", OptText),
            ("event_type", Text),
            ("delivery_id", OptText),
            ("payload", Json),
            ("received_at", Time),
        ],
        // Ids sort by time. PostgreSQL's events have no row number; their
        // primary key, like SQLite's events_tenant index, serves this order.
        order_by: "tenant_id, id",
    },
    Table {
        name: "user_mappings",
        columns: &[
            ("credential_id", Text),
            ("app_user_id", Text),
            ("user_id", Text),
            ("created_at", Time),
        ],
        order_by: "credential_id, app_user_id",
    },
    Table {
        name: "ingress_counters",
        columns: &[
            ("credential_id", Text),
            ("kind", Text),
            ("outcome", Text),
            ("count", Int),
        ],
        order_by: "credential_id, kind, outcome",
    },
    Table {
        name: "sessions",
        columns: &[
            ("id_hash", Bytes),
            ("token_id", Text),
            ("csrf", Text),
            ("created_at", Time),
            ("expires_at", Time),
        ],
        order_by: "id_hash",
    },
    Table {
        name: "audit",
        columns: &[
            ("id", Text),
            ("tenant_id", Text),
            ("actor_id", Text),
            ("actor_name", Text),
            ("action", Text),
            ("target_type", Text),
            ("target_id", Text),
            ("at", Time),
            ("source", OptText),
            ("details", Json),
        ],
        order_by: "seq",
    },
];

/// Rows read per batch.
pub const BATCH_ROWS: usize = 500;

/// What travels from the reading store to the writing one.
#[derive(Debug)]
pub enum Chunk {
    /// Rows of `TABLES[table]`, each with one value per column.
    Rows { table: usize, rows: Vec<Vec<Value>> },
    /// The reader got to the end: only now may the writer commit.
    End,
}

/// How many rows of each table were copied.
pub type CopyReport = BTreeMap<&'static str, u64>;

/// The message of a copy into a store that already holds data.
pub(crate) fn not_empty(table: &str) -> StoreError {
    StoreError::Backend(format!(
        "the target is not empty (table {table} has rows): copy only into a new, empty database"
    ))
}

/// Checks that a row read from `table` has the values its columns need, so a
/// backend's writer can convert without surprises.
pub(crate) fn check_row(table: &Table, row: &[Value]) -> Result<()> {
    if row.len() != table.columns.len() {
        return Err(StoreError::Backend(format!(
            "a {} row has {} values, not {}",
            table.name,
            row.len(),
            table.columns.len()
        )));
    }
    for ((column, kind), value) in table.columns.iter().zip(row) {
        let fits = matches!(
            (kind, value),
            (Text | OptText, Value::Text(_))
                | (Bool, Value::Bool(_))
                | (Int, Value::Int(_))
                | (Time | OptTime, Value::Time(_))
                | (Bytes, Value::Bytes(_))
                | (Json, Value::Json(_))
                | (OptText | OptTime, Value::Null)
        );
        if !fits {
            return Err(StoreError::Backend(format!(
                "{}.{column}: a {kind:?} column got {value:?}",
                table.name
            )));
        }
    }
    Ok(())
}

/// Copies every row of `from` into `to`, which must be migrated and empty.
/// `from` is read in one consistent snapshot (it may keep serving); `to` is
/// written in one transaction that commits only after the last row, so a
/// copy that fails at any point leaves `to` as empty as it was.
pub async fn copy(from: &dyn Store, to: &dyn Store) -> Result<CopyReport> {
    let (sink, source) = mpsc::channel::<Chunk>(4);
    let (read, written) = tokio::join!(from.export_snapshot(sink), to.import_snapshot(source));
    // A reader that fails says why; the writer then only saw the rows stop.
    // A writer that fails makes the reader stop quietly (see `send`).
    read?;
    written
}

/// Hands a chunk to the writer; false when the writer has stopped (it
/// failed, and reports its own error), so the reader should stop too.
pub(crate) fn send_blocking(sink: &mpsc::Sender<Chunk>, chunk: Chunk) -> bool {
    sink.blocking_send(chunk).is_ok()
}

/// The writer's error when the rows stop before [`Chunk::End`].
pub(crate) fn cut_short() -> StoreError {
    StoreError::Backend("the copy's source stopped before the end; nothing was written".into())
}
