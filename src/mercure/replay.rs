//! Mercure replay: what a reconnecting subscriber missed after its
//! `Last-Event-ID`, read from history as the stream is written.
//!
//! Event ids are cursors into the hub-wide sequence, but history is
//! trimmed per topic. So a cursor is honoured only when nothing the
//! subscriber selects was trimmed after it; otherwise the hub says so
//! (`Mercure-Last-Event-ID: earliest`, nothing replayed) instead of
//! resuming with a silent hole. The replay is read a page at a time: its
//! cost follows what the subscriber selects, and one page at most is held
//! in memory, however much is stored.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::history::Publication;
use crate::history::{History, HistoryError, ReplayPage, Selection};
use crate::hub::Filter;
use crate::protocol::mercure::matcher::TopicMatcher;
use crate::protocol::mercure::EARLIEST;

/// Publications read from history at a time.
pub const PAGE: usize = 256;

type PageFuture = Pin<Box<dyn Future<Output = Result<ReplayPage, HistoryError>> + Send>>;

/// Why a replay stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// History failed.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Publications were trimmed while the replay was being written: the
    /// subscriber reconnects from what it got and is told what is lost.
    #[error("history was trimmed during the replay, reconnect")]
    Trimmed,
}

/// A replay in progress.
pub struct Replay {
    history: Arc<dyn History>,
    selection: Arc<Selection>,
    filter: Arc<dyn Filter>,
    /// The last `seq` read.
    after: u64,
    /// The replay ends here: live delivery starts after it.
    upto: u64,
    page: std::vec::IntoIter<Arc<Publication>>,
    /// The last page was full: there may be more.
    more: bool,
    next: Option<PageFuture>,
}

/// How a replay starts.
pub enum Start {
    /// Replay from here; `Mercure-Last-Event-ID` is the cursor asked for.
    From(Replay),
    /// The cursor is unknown, or publications selected after it are no
    /// longer stored: nothing is replayed, `Mercure-Last-Event-ID` is
    /// `earliest`.
    Lost,
}

impl Replay {
    /// Starts a replay of what `matchers` select after `cursor` (an event
    /// id, or `earliest` for everything stored) up to `upto`, for a
    /// subscriber whose `filter` decides what it may receive.
    pub async fn start(
        history: Arc<dyn History>,
        matchers: &[TopicMatcher],
        filter: Arc<dyn Filter>,
        cursor: &str,
        upto: u64,
    ) -> Result<Start, HistoryError> {
        let after = if cursor == EARLIEST {
            0
        } else {
            match history.seq_of(cursor).await? {
                Some(seq) => seq,
                None => return Ok(Start::Lost),
            }
        };
        let selection = Arc::new(Selection::new(matchers));
        let first = history.replay(selection.clone(), after, upto, PAGE).await?;
        if first.gap && after > 0 {
            return Ok(Start::Lost);
        }
        let mut replay = Replay {
            history,
            selection,
            filter,
            after,
            upto,
            page: Vec::new().into_iter(),
            more: false,
            next: None,
        };
        replay.take(first.publications);
        Ok(Start::From(replay))
    }

    fn take(&mut self, page: Vec<Arc<Publication>>) {
        self.more = page.len() == PAGE;
        if let Some(last) = page.last() {
            self.after = last.seq;
        }
        self.page = page.into_iter();
    }

    /// The next publication to send; `None` once the replay is over.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Arc<Publication>>, ReplayError>> {
        loop {
            if let Some(p) = self.page.by_ref().find(|p| self.filter.admits(p)) {
                return Poll::Ready(Ok(Some(p)));
            }
            if !self.more {
                return Poll::Ready(Ok(None));
            }
            let next = self.next.get_or_insert_with(|| {
                let (history, selection) = (self.history.clone(), self.selection.clone());
                let (after, upto) = (self.after, self.upto);
                Box::pin(async move { history.replay(selection, after, upto, PAGE).await })
            });
            let page = std::task::ready!(next.as_mut().poll(cx))?;
            self.next = None;
            if page.gap {
                return Poll::Ready(Err(ReplayError::Trimmed));
            }
            self.take(page.publications);
        }
    }
}
