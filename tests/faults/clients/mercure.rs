//! Mercure subscribers: an SSE stream as `EventSource` opens it, resumed
//! with `Last-Event-ID`.

use tidings::protocol::sse::Parser;

use super::{Body, Conn, End, Kind, State, CHANNEL_PREFIX};
use crate::record::Start;

fn enc(s: &str) -> String {
    tidings::protocol::mercure::form::encode(s)
}

/// One connection, until it ends.
pub async fn connection(c: &mut Conn, state: &mut State) -> End {
    let query = match c.kind {
        Kind::MercurePattern => format!("match_urlpattern={}", enc(&format!("{CHANNEL_PREFIX}:n"))),
        Kind::MercureTemplate => format!("topic={}", enc(&format!("{CHANNEL_PREFIX}{{n}}"))),
        _ => c
            .channels
            .iter()
            .map(|ch| format!("match={}", enc(ch)))
            .collect::<Vec<_>>()
            .join("&"),
    };
    let url = format!("{}/.well-known/mercure?{query}", c.node());
    let mut req = c.env.http.get(url).header("accept", "text/event-stream");
    if let Some(cursor) = &state.cursor {
        req = req.header("last-event-id", cursor);
    }
    let res = match tokio::time::timeout(std::time::Duration::from_secs(5), req.send()).await {
        Ok(Ok(res)) => res,
        _ => return End::Unreachable,
    };
    if res.status() != 200 {
        // Shutting down (503) and the like: try again.
        return End::Unreachable;
    }
    let answered = res
        .headers()
        .get("mercure-last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let start = match (&state.cursor, &answered) {
        (None, _) => Start::Fresh,
        (Some(asked), Some(got)) if asked == got => Start::Recovered,
        (Some(_), Some(got)) if got == "earliest" => Start::Lost,
        (Some(asked), got) => {
            c.anomaly(format!(
                "asked to resume after {asked}, answered Mercure-Last-Event-ID {got:?}"
            ));
            Start::Lost
        }
    };
    {
        let mut record = c.record.lock();
        for ch in &c.channels {
            let asked_after = match start {
                Start::Recovered => state.last.get(ch).copied(),
                // What it had is no longer where it continues from.
                _ => state.last.remove(ch).and(None),
            };
            record.started(ch, start, asked_after);
        }
    }
    let mut body = Body::of(res);
    let mut parser = Parser::default();
    loop {
        let chunk = match c.read(&mut body).await {
            Err(i) => return i.into(),
            Ok(Some(Ok(chunk))) => chunk,
            Ok(_) => return End::ClosedByHub,
        };
        for event in parser.feed(&chunk) {
            let Some((channel, n)) = c.decode(event.data.as_bytes()) else {
                c.anomaly(format!("undecodable event {:?}", event.data));
                continue;
            };
            c.record.lock().received(&channel, n);
            state.last.insert(channel, n);
            match event.id {
                Some(id) => state.cursor = Some(id),
                None => c.anomaly("an event without an id".into()),
            }
        }
    }
}
