//! The management API as the benchmark's set-up uses it: a few calls with
//! the admin token over one keep-alive connection.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::load::{request, Conn};
use crate::seed;

/// The management API with the admin token, for set-up steps.
pub struct Api {
    conn: Conn,
    addr: SocketAddr,
    token: String,
}

impl Api {
    pub async fn connect(addr: SocketAddr, token: &str) -> anyhow::Result<Api> {
        Ok(Api {
            conn: Conn::open(addr).await?,
            addr,
            token: token.to_string(),
        })
    }

    async fn post(&mut self, path: &str, body: Value) -> anyhow::Result<(u16, bytes::Bytes)> {
        let req = request(
            "POST",
            self.addr,
            path,
            Some(&self.token),
            Some(body.to_string().into_bytes()),
        );
        let (status, bytes) = self.conn.send(req).await?;
        Ok((status.as_u16(), bytes))
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        body: Value,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let (status, bytes) = self.post(path, body).await?;
        if status != expect {
            bail!(
                "POST {path} answered {status}, not {expect}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Has the server export seeded credential `id` (number `n`), which it
    /// can only do by opening its secret, and checks the file holds the key
    /// that was sealed.
    pub async fn check_export(&mut self, (id, n): &(String, u64)) -> anyhow::Result<()> {
        let passphrase = hex::encode(crypto::random_bytes(16)?);
        let (status, file) = self
            .post(
                "/v1/credentials/export",
                json!({ "ids": [id], "passphrase": passphrase }),
            )
            .await?;
        if status != 200 {
            bail!(
                "exporting seeded credential {id} answered {status}: {}",
                String::from_utf8_lossy(&file)
            );
        }
        let plain = crypto::export::open(&passphrase.into(), &file)?;
        let content: Value = serde_json::from_slice(&plain)?;
        let key = seed::api_key(*n);
        let has_key = content["credentials"][0]["config_params"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["value"].as_str() == Some(key.as_str())));
        if !has_key {
            bail!("the export of seeded credential {id} does not hold its API key");
        }
        Ok(())
    }
}

pub fn string_field(v: &Value, field: &str) -> anyhow::Result<String> {
    v[field]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {field} in {v}"))
}
