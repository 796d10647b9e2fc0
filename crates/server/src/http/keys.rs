//! `/v1/keys`: the master keys the data knows, and their rotation.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, JsonBody, Problem};
use crate::app::{App, KeyStatus, Principal};

/// A master key, by fingerprint (the key itself never leaves the server).
#[derive(Debug, Serialize, ToSchema)]
pub struct MasterKeyOut {
    /// Fingerprint, `kek_…`.
    pub id: String,
    /// `active` wraps new data keys; `draining` still wraps some, which a
    /// rotation is moving to the active key; `retired` wraps nothing.
    #[schema(example = "active")]
    pub state: String,
    /// Credentials whose data key this key wraps.
    pub credentials: u64,
    /// Whether the server that answered holds this key.
    pub held_here: bool,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// The progress of a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotationOut {
    pub from: String,
    pub to: String,
    /// Credentials still wrapped by `from`.
    pub remaining: u64,
    /// Credentials wrapped by `to`.
    pub done: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeysOut {
    /// The key that wraps new data keys.
    pub active: String,
    pub keys: Vec<MasterKeyOut>,
    /// Present while a rotation is re-wrapping data keys.
    pub rotation: Option<RotationOut>,
}

impl From<KeyStatus> for KeysOut {
    fn from(s: KeyStatus) -> KeysOut {
        KeysOut {
            active: s.active,
            keys: s
                .keys
                .into_iter()
                .map(|k| MasterKeyOut {
                    id: k.id,
                    state: k.state.into(),
                    credentials: k.credentials,
                    held_here: k.held_here,
                    created_at: k.created_at,
                    retired_at: k.retired_at,
                })
                .collect(),
            rotation: s.rotation.map(|r| RotationOut {
                from: r.from,
                to: r.to,
                remaining: r.remaining,
                done: r.done,
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// A key this server (and every replica) already holds. Leave it out to
    /// have the server generate one and add it to its key file.
    #[schema(pattern = "^kek_[0-9a-f]{16}$")]
    pub to: Option<String>,
}

#[utoipa::path(get, path = "/v1/keys", tag = "identity",
    responses((status = 200, body = KeysOut), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn key_status(
    State(app): State<Arc<App>>,
    p: Principal,
) -> Result<Json<KeysOut>, ApiError> {
    Ok(Json(app.key_status(&p).await?.into()))
}

/// Makes a new master key active; the server re-wraps every data key with it
/// in the background while it keeps serving, then retires the old key.
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "identity", request_body = RotateKey,
    responses((status = 202, body = KeysOut), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn rotate_key(
    State(app): State<Arc<App>>,
    p: Principal,
    JsonBody(body): JsonBody<RotateKey>,
) -> Result<(StatusCode, Json<KeysOut>), ApiError> {
    let status = app.rotate_key(&p, body.to.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(status.into())))
}
