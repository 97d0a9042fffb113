//! The subscriptions API (`GET {hub}/subscriptions[/{type}/{match}[/{subscriber}]]`):
//! which active subscriptions a path selects, as the draft's documents.

use serde_json::Value;

use super::{MercureError, MercureState};
use crate::auth::{AuthError, Role};
use crate::protocol::mercure::matcher::MatcherType;
use crate::protocol::mercure::subscription::{self, SubscriptionDoc};
use crate::protocol::mercure::EARLIEST;

/// The answer of the subscriptions API for `path`, asked with `token`: the
/// document, and the last event id it is current as of.
pub async fn document(
    state: &MercureState,
    path: &str,
    token: &str,
) -> Result<(Value, String), MercureError> {
    if !state.settings.subscriptions {
        return Err(MercureError::NotFound);
    }
    let grants = state.verifier.verify(token, Role::Subscriber)?;
    if !grants.may_read(std::iter::once(path)) {
        return Err(AuthError::InsufficientScope.into());
    }
    let base = format!("{}/subscriptions", state.hub_path());
    let rest = path.strip_prefix(&base).unwrap_or_default();
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    // Which subscriptions the path selects, and whether it names one.
    let (kind, matcher, subscriber): (Option<MatcherType>, Option<&str>, Option<&str>) =
        match segments.as_slice() {
            [] => (None, None, None),
            [t, m] if MatcherType::from_draft_name(t).is_some() => {
                (MatcherType::from_draft_name(t), Some(m), None)
            }
            [t, m, s] if MatcherType::from_draft_name(t).is_some() => {
                (MatcherType::from_draft_name(t), Some(m), Some(s))
            }
            [m] if state.settings.compat => (Some(MatcherType::Legacy), Some(m), None),
            [m, s] if state.settings.compat => (Some(MatcherType::Legacy), Some(m), Some(s)),
            _ => return Err(MercureError::NotFound),
        };
    let last_event_id = state
        .hub
        .history()
        .last()
        .await
        .map_err(|e| MercureError::Unavailable(e.to_string()))?
        .map(|(_, id)| id)
        .unwrap_or_else(|| EARLIEST.to_owned());
    let docs: Vec<Value> = {
        let active = state.active.lock();
        let mut docs = Vec::new();
        for (sub_id, subs) in active.iter() {
            if subscriber.is_some_and(|s| s != sub_id) {
                continue;
            }
            for a in subs {
                if kind.is_some_and(|k| k != a.match_type)
                    || matcher.is_some_and(|m| m != a.matcher)
                {
                    continue;
                }
                docs.push(
                    SubscriptionDoc {
                        hub_path: state.hub_path(),
                        match_type: a.match_type,
                        matcher: &a.matcher,
                        subscriber: sub_id,
                        active: true,
                        payload: a.payload.as_ref(),
                    }
                    .to_json(),
                );
            }
        }
        docs
    };
    let legacy = kind == Some(MatcherType::Legacy);
    let body = if subscriber.is_some() {
        docs.into_iter().next().ok_or(MercureError::NotFound)?
    } else {
        subscription::collection(path, legacy, &last_event_id, docs)
    };
    Ok((body, last_event_id))
}
