//! `/v1/events`: what credentials' URLs received, normalised.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use storage::{EventFilter, EventRecord};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, PathParam, Problem, QueryParams};
use super::ListOf;
use crate::app::{encode_cursor, App, PageParams, Principal};

#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    pub id: String,
    pub credential_id: String,
    /// `webhook` or `action`.
    pub kind: String,
    pub valid_request: bool,
    pub app_user_id: Option<String>,
    /// The platform user, after mapping; null when unmapped.
    pub user_id: Option<String>,
    pub event_type: String,
    pub delivery_id: Option<String>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

impl From<EventRecord> for Event {
    fn from(e: EventRecord) -> Event {
        Event {
            id: e.id,
            credential_id: e.credential_id,
            kind: e.kind,
            valid_request: e.valid_request,
            app_user_id: e.app_user_id,
            user_id: e.user_id,
            event_type: e.event_type,
            delivery_id: e.delivery_id,
            payload: e.payload,
            received_at: e.received_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    pub credential_id: Option<String>,
    /// `webhook` or `action`.
    pub kind: Option<String>,
    pub event_type: Option<String>,
    pub user_id: Option<String>,
    /// 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, body = ListOf<Event>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn list_events(
    State(app): State<Arc<App>>,
    p: Principal,
    QueryParams(q): QueryParams<EventQuery>,
) -> Result<Json<ListOf<Event>>, ApiError> {
    let filter = EventFilter {
        credential_id: q.credential_id,
        kind: q.kind,
        event_type: q.event_type,
        user_id: q.user_id,
    };
    let page = app
        .list_events(
            &p,
            filter,
            &PageParams {
                limit: q.limit,
                cursor: q.cursor,
            },
        )
        .await?;
    Ok(Json(ListOf {
        items: page.items.into_iter().map(Event::from).collect(),
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}

#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "Event id")),
    responses((status = 200, body = Event), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_event(
    State(app): State<Arc<App>>,
    p: Principal,
    PathParam(id): PathParam<String>,
) -> Result<Json<Event>, ApiError> {
    Ok(Json(app.get_event(&p, &id).await?.into()))
}
