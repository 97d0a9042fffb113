//! Model-based property tests of history: random sequences of appends,
//! channel removals, sweeps and (for the disk store) restarts, each step
//! checked against a naive model that keeps every publication ever
//! appended with a "kept" flag.
//!
//! What the model knows, from the `History` trait and the two stores:
//!
//! - `seq` is hub-wide, from 1, one per publication, never reused (a disk
//!   store continues it after a restart);
//! - each channel counts `offset` from 1 within its *life*: a life starts
//!   at the channel's first publication, with the store's current base
//!   epoch, and ends when a sweep forgets the channel (nothing kept and idle
//!   past `meta_ttl`); a sweep that forgets any topic (channel or alternate)
//!   draws a new base epoch, so a channel born again never reuses an epoch;
//! - a channel keeps its newest `size` publications; a sweep expires what is
//!   older than `ttl` (here 0: everything, or a day: nothing);
//!   `remove_channel` drops a channel's publications but keeps its position;
//! - an alternate topic routes the publications naming it; it is forgotten
//!   by the first sweep after it routes nothing kept;
//! - `replay` returns kept publications selected by the matchers (by their
//!   channel or one of their alternates) with `after < seq <= upto`,
//!   ascending, at most `limit`, and `gap` is set when a selected
//!   publication with `seq > after` was removed. The stores may also set it
//!   conservatively for any selection when a topic was forgotten after
//!   `after` (what it lost is gone with it).
//!
//! The three bugs these properties found are kept as regression tests at
//! the end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tidings::history::disk::DiskHistory;
use tidings::history::memory::MemoryHistory;
use tidings::history::{Draft, Publication};
use tidings::history::{
    History, HistoryError, Retention, RetentionPolicy, Selection, StreamPosition,
};
use tidings::protocol::mercure::matcher::{MatcherType, TopicMatcher};

/// The hub URL matchers resolve against.
const HUB_URL: &str = "https://hub.example/.well-known/mercure";
/// Channels publications go to.
const CHANNELS: [&str; 3] = ["a", "b", "c"];
/// Alternate topics a publication may also name ("a" is a channel too).
const ALTERNATES: [&str; 3] = ["x", "y", "a"];
/// A topic never published: its position is the base epoch, and exact
/// selections of it exercise the conservative "forgotten" gap.
const NEVER: &str = "z";

// ---------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone)]
struct DraftSpec {
    channel: usize,
    /// Indexes into ALTERNATES (repeats allowed: a topic named twice).
    alternates: Vec<usize>,
    /// A publisher-supplied id shared with other publications (Mercure
    /// allows it), instead of a fresh one.
    shared_id: Option<usize>,
    len: usize,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<DraftSpec>),
    RemoveChannel(usize),
    Sweep,
    /// Disk: drop the store and open the same directory again. Memory: no-op.
    Restart,
}

/// A random query checked after a step.
#[derive(Debug, Clone)]
struct Probe {
    /// Index into `selections()`.
    selection: usize,
    /// Taken modulo `last seq + 2`: any cursor, the newest and past it too.
    after: u64,
    /// `upto`: 0 unbounded, 1 the newest seq, 2 `upto` modulo `last + 2`
    /// (may be at or below `after`: an empty page), 3 a little past `after`.
    upto_kind: u8,
    upto: u64,
    limit: usize,
    /// Picks a publication whose id `seq_of` is asked.
    pick: usize,
}

#[derive(Debug, Clone, Copy)]
struct Setup {
    size: usize,
    ttl_zero: bool,
    meta_zero: bool,
}

fn draft_spec() -> impl Strategy<Value = DraftSpec> {
    let alternates = prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec(0..ALTERNATES.len(), 1..3),
    ];
    let shared = prop_oneof![3 => Just(None), 1 => (0..2usize).prop_map(Some)];
    (0..CHANNELS.len(), alternates, shared, 0..16usize).prop_map(
        |(channel, alternates, shared_id, len)| DraftSpec {
            channel,
            alternates,
            shared_id,
            len,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(draft_spec(), 1..4).prop_map(Op::Append),
        1 => (0..CHANNELS.len() + 1).prop_map(Op::RemoveChannel),
        2 => Just(Op::Sweep),
        1 => Just(Op::Restart),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        0..selections().len(),
        0..128u64,
        0..4u8,
        0..128u64,
        prop_oneof![Just(1usize), Just(2), Just(3), Just(1000)],
        any::<usize>(),
    )
        .prop_map(|(selection, after, upto_kind, upto, limit, pick)| Probe {
            selection,
            after,
            upto_kind,
            upto,
            limit,
            pick,
        })
}

fn setup() -> impl Strategy<Value = Setup> {
    (1..5usize, any::<bool>(), any::<bool>()).prop_map(|(size, ttl_zero, meta_zero)| Setup {
        size,
        ttl_zero,
        meta_zero,
    })
}

fn steps() -> impl Strategy<Value = Vec<(Op, Vec<Probe>)>> {
    prop::collection::vec((op(), prop::collection::vec(probe(), 0..4)), 1..30)
}

/// The matcher sets replay is asked about: exact topics (existing, alternate,
/// never published), the wildcard, URL patterns, a URI template and a
/// Centrifugo channel pattern, alone and mixed.
fn selections() -> Vec<Vec<TopicMatcher>> {
    let url = url::Url::parse(HUB_URL).expect("hub url");
    let m = |kind, raw: &str| TopicMatcher::new(kind, raw, &url).expect("matcher");
    let exact = |raw: &str| m(MatcherType::Exact, raw);
    vec![
        vec![],
        vec![exact("a")],
        vec![exact("b")],
        vec![exact("x")],
        vec![exact("a"), exact("y")],
        vec![exact("c"), exact("b")],
        vec![exact(NEVER)],
        vec![exact(NEVER), exact("b")],
        vec![m(MatcherType::Urlpattern, "*")],
        vec![m(MatcherType::Exact, "*")],
        vec![m(
            MatcherType::Urlpattern,
            "https://hub.example/.well-known/:t",
        )],
        vec![m(
            MatcherType::Urlpattern,
            "https://hub.example/.well-known/x",
        )],
        vec![m(
            MatcherType::Urlpattern,
            "https://hub.example/.well-known/a",
        )],
        vec![m(MatcherType::Legacy, "{x}")],
        vec![TopicMatcher::channel_pattern("*").expect("channel pattern")],
        vec![
            exact("b"),
            m(MatcherType::Urlpattern, "https://hub.example/.well-known/y"),
        ],
    ]
}

fn retention(setup: Setup) -> RetentionPolicy {
    let long = Duration::from_secs(24 * 3600);
    RetentionPolicy::uniform(Retention {
        size: setup.size,
        ttl: if setup.ttl_zero { Duration::ZERO } else { long },
        meta_ttl: if setup.meta_zero {
            Duration::ZERO
        } else {
            long
        },
    })
}

// ---------------------------------------------------------------------------
// The model

#[derive(Debug, Clone)]
struct MPub {
    seq: u64,
    id: String,
    channel: String,
    alternates: Vec<String>,
    offset: u64,
    epoch: String,
    data: Bytes,
    kept: bool,
    /// The life of its channel it belongs to.
    chan_life: u32,
    /// The life of each alternate topic it was routed by.
    alt_lives: Vec<(String, u32)>,
}

impl MPub {
    fn topics(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.channel.as_str()).chain(self.alternates.iter().map(String::as_str))
    }
}

#[derive(Debug, Clone)]
struct ChanState {
    epoch: String,
    top: u64,
}

#[derive(Default)]
struct Model {
    setup: Option<Setup>,
    /// Everything ever appended; index `seq - 1`.
    pubs: Vec<MPub>,
    /// Channels with a current life.
    chans: HashMap<String, ChanState>,
    /// Life counter per channel (bumped when forgotten).
    chan_life: HashMap<String, u32>,
    /// Epochs of every past life, per channel.
    past_epochs: HashMap<String, Vec<String>>,
    /// Alternate topics with a current life.
    alts: HashSet<String>,
    alt_life: HashMap<String, u32>,
    /// The base epoch, once observed in the current base generation.
    base: Option<String>,
    /// Base epochs of earlier generations.
    old_bases: Vec<String>,
    /// Newest seq of a forgotten topic life.
    forgotten_max: u64,
    /// Some topic was forgotten at some point.
    any_forgotten: bool,
}

/// What the model expects of one replay.
struct ReplayExpect {
    seqs: Vec<u64>,
    /// A selected publication with seq > after was removed.
    gap: bool,
    /// ... and its topic (the one selecting it) still lives.
    gap_current: bool,
    /// The stores' documented conservative rule may set gap.
    conservative: bool,
}

impl Model {
    fn new(setup: Setup) -> Model {
        Model {
            setup: Some(setup),
            ..Default::default()
        }
    }

    fn size(&self) -> usize {
        self.setup.map_or(1, |s| s.size)
    }

    fn last_seq(&self) -> u64 {
        self.pubs.len() as u64
    }

    fn pub_at(&self, seq: u64) -> Option<&MPub> {
        seq.checked_sub(1).and_then(|i| self.pubs.get(i as usize))
    }

    /// Checks the base epoch a never-published (or forgotten) channel
    /// reports, or the epoch a newborn channel gets.
    fn check_base(&mut self, epoch: &str, what: &str) -> Result<(), TestCaseError> {
        match &self.base {
            Some(b) => prop_assert_eq!(epoch, b.as_str(), "{}: base epoch changed", what),
            None => {
                prop_assert!(
                    !self.old_bases.iter().any(|b| b == epoch),
                    "{}: a new base epoch reuses an old one ({})",
                    what,
                    epoch
                );
                self.base = Some(epoch.to_owned());
            }
        }
        Ok(())
    }

    /// Records appended publications, checking their positions.
    fn append(&mut self, drafts: &[Draft], got: &[Arc<Publication>]) -> Result<(), TestCaseError> {
        prop_assert_eq!(got.len(), drafts.len(), "append returns one per draft");
        for (draft, p) in drafts.iter().zip(got) {
            let seq = self.last_seq() + 1;
            prop_assert_eq!(p.seq, seq, "seq is hub-wide and contiguous");
            prop_assert_eq!(&p.draft, draft, "the draft is stored as given");
            let channel = draft.channel.clone();
            if !self.chans.contains_key(&channel) {
                self.check_base(&p.epoch, &format!("first publication of {channel}"))?;
                if let Some(old) = self.past_epochs.get(&channel) {
                    prop_assert!(
                        !old.iter().any(|e| **e == *p.epoch),
                        "channel {} born again with an old epoch",
                        channel
                    );
                }
                self.chans.insert(
                    channel.clone(),
                    ChanState {
                        epoch: p.epoch.to_string(),
                        top: 0,
                    },
                );
            }
            let ch = self.chans.get_mut(&channel).expect("just inserted");
            ch.top += 1;
            prop_assert_eq!(p.offset, ch.top, "offset counts the channel's publications");
            prop_assert_eq!(&*p.epoch, ch.epoch.as_str(), "a channel keeps its epoch");
            let chan_life = *self.chan_life.entry(channel.clone()).or_default();
            let mut alt_lives = Vec::new();
            for t in &draft.alternates {
                self.alts.insert(t.clone());
                let life = *self.alt_life.entry(t.clone()).or_default();
                if !alt_lives.iter().any(|(n, _)| n == t) {
                    alt_lives.push((t.clone(), life));
                }
            }
            self.pubs.push(MPub {
                seq,
                id: draft.id.clone(),
                channel: channel.clone(),
                alternates: draft.alternates.clone(),
                offset: ch.top,
                epoch: ch.epoch.clone(),
                data: draft.data.clone(),
                kept: true,
                chan_life,
                alt_lives,
            });
            // Trim the channel to its newest `size`.
            let size = self.size();
            let kept: Vec<usize> = (0..self.pubs.len())
                .filter(|&i| self.pubs[i].kept && self.pubs[i].channel == channel)
                .collect();
            if kept.len() > size {
                for &i in &kept[..kept.len() - size] {
                    self.pubs[i].kept = false;
                }
            }
        }
        Ok(())
    }

    fn remove_channel(&mut self, channel: &str) {
        for p in &mut self.pubs {
            if p.channel == channel {
                p.kept = false;
            }
        }
    }

    /// Applies a sweep; returns how many publications it expires.
    fn sweep(&mut self) -> usize {
        let setup = self.setup.expect("setup");
        let mut expired = 0;
        if setup.ttl_zero {
            for p in &mut self.pubs {
                if p.kept {
                    p.kept = false;
                    expired += 1;
                }
            }
        }
        let mut forgot = false;
        if setup.meta_zero {
            let names: Vec<String> = self.chans.keys().cloned().collect();
            for name in names {
                let life = self.chan_life.get(&name).copied().unwrap_or_default();
                let mine: Vec<&MPub> = self
                    .pubs
                    .iter()
                    .filter(|p| p.channel == name && p.chan_life == life)
                    .collect();
                if mine.iter().all(|p| !p.kept) {
                    let newest = mine.iter().map(|p| p.seq).max().unwrap_or_default();
                    self.forgotten_max = self.forgotten_max.max(newest);
                    if let Some(ch) = self.chans.remove(&name) {
                        self.past_epochs
                            .entry(name.clone())
                            .or_default()
                            .push(ch.epoch);
                    }
                    *self.chan_life.entry(name).or_default() += 1;
                    forgot = true;
                }
            }
        }
        let alts: Vec<String> = self.alts.iter().cloned().collect();
        for name in alts {
            let life = self.alt_life.get(&name).copied().unwrap_or_default();
            let routed: Vec<&MPub> = self
                .pubs
                .iter()
                .filter(|p| p.alt_lives.iter().any(|(n, l)| *n == name && *l == life))
                .collect();
            if routed.iter().all(|p| !p.kept) {
                let newest = routed.iter().map(|p| p.seq).max().unwrap_or_default();
                self.forgotten_max = self.forgotten_max.max(newest);
                self.alts.remove(&name);
                *self.alt_life.entry(name).or_default() += 1;
                forgot = true;
            }
        }
        if forgot {
            self.any_forgotten = true;
            if let Some(b) = self.base.take() {
                self.old_bases.push(b);
            }
        }
        expired
    }

    /// A topic of `p` (its channel or an alternate) still in the life `p`
    /// was in.
    fn lives_on(&self, p: &MPub, topic: &str) -> bool {
        let by_channel = topic == p.channel
            && self.chans.contains_key(topic)
            && self.chan_life.get(topic).copied().unwrap_or_default() == p.chan_life;
        let by_alternate = p.alt_lives.iter().any(|(n, l)| {
            n == topic
                && self.alts.contains(topic)
                && self.alt_life.get(topic).copied().unwrap_or_default() == *l
        });
        by_channel || by_alternate
    }

    fn replay(&self, sel: &[TopicMatcher], after: u64, upto: u64, limit: usize) -> ReplayExpect {
        let selects = |t: &str| sel.iter().any(|m| m.matches(t));
        let selected = |p: &MPub| p.topics().any(selects);
        let seqs = if after >= upto {
            Vec::new()
        } else {
            self.pubs
                .iter()
                .filter(|p| p.kept && p.seq > after && p.seq <= upto && selected(p))
                .map(|p| p.seq)
                .take(limit)
                .collect()
        };
        let lost = || {
            self.pubs
                .iter()
                .filter(move |p| !p.kept && p.seq > after && selected(p))
        };
        let gap = lost().next().is_some();
        let gap_current = lost().any(|p| p.topics().any(|t| selects(t) && self.lives_on(p, t)));
        let conservative = self.forgotten_max > after;
        ReplayExpect {
            seqs,
            gap,
            gap_current,
            conservative,
        }
    }

    fn position(&self, channel: &str) -> Option<StreamPosition> {
        self.chans.get(channel).map(|c| StreamPosition {
            offset: c.top,
            epoch: c.epoch.clone(),
        })
    }

    fn newest_kept(&self) -> Option<(u64, String)> {
        self.pubs
            .iter()
            .rev()
            .find(|p| p.kept)
            .map(|p| (p.seq, p.id.clone()))
    }

    /// The earliest kept publication with `id`.
    fn seq_of(&self, id: &str) -> Option<u64> {
        self.pubs
            .iter()
            .find(|p| p.id == id && p.kept)
            .map(|p| p.seq)
    }
}

// ---------------------------------------------------------------------------
// Running a case

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Disk,
}

fn open(kind: Kind, dir: &std::path::Path, setup: Setup) -> Result<Arc<dyn History>, HistoryError> {
    Ok(match kind {
        Kind::Memory => Arc::new(MemoryHistory::new(retention(setup))),
        Kind::Disk => Arc::new(DiskHistory::open(dir, retention(setup), 1 << 20)?),
    })
}

fn ok<T>(r: Result<T, HistoryError>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

fn check_pub(p: &Publication, m: &MPub) -> Result<(), TestCaseError> {
    prop_assert_eq!(p.seq, m.seq);
    prop_assert_eq!(p.id(), m.id.as_str());
    prop_assert_eq!(p.channel(), m.channel.as_str());
    prop_assert_eq!(&p.draft.alternates, &m.alternates);
    prop_assert_eq!(p.offset, m.offset);
    prop_assert_eq!(&*p.epoch, m.epoch.as_str());
    prop_assert_eq!(&p.draft.data, &m.data);
    Ok(())
}

fn draft(spec: &DraftSpec, n: usize) -> Draft {
    let mut d = Draft::to_channel(
        CHANNELS[spec.channel].to_owned(),
        Bytes::from(format!("{n}:{}", "d".repeat(spec.len))),
        None,
        Default::default(),
    );
    d.alternates = spec
        .alternates
        .iter()
        .map(|&i| ALTERNATES[i].to_owned())
        .collect();
    if let Some(i) = spec.shared_id {
        d.id = format!("shared-{i}");
    }
    d
}

struct Case {
    history: Arc<dyn History>,
    model: Model,
    selections: Vec<Vec<TopicMatcher>>,
}

impl Case {
    /// One replay against the model.
    async fn check_replay(
        &self,
        s: usize,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<(), TestCaseError> {
        let sel = &self.selections[s];
        let page = ok(
            self.history
                .replay(Arc::new(Selection::new(sel)), after, upto, limit)
                .await,
            "replay",
        )?;
        let want = self.model.replay(sel, after, upto, limit);
        let got: Vec<u64> = page.publications.iter().map(|p| p.seq).collect();
        let ctx = format!("replay {sel:?} after {after} upto {upto} limit {limit}");
        prop_assert_eq!(&got, &want.seqs, "{}: publications", ctx);
        for p in &page.publications {
            let m = self
                .model
                .pub_at(p.seq)
                .expect("a replayed seq was appended");
            check_pub(p, m)?;
        }
        // No gap without a reason: a selected publication removed after
        // `after`, or the documented conservative rule for exact topics.
        prop_assert!(
            !page.gap || want.gap || want.conservative,
            "{}: gap reported, but nothing selected after it was removed",
            ctx
        );
        if after < upto {
            // Never a missed gap (a silent hole in a Mercure replay).
            prop_assert!(
                !want.gap_current || page.gap,
                "{}: a selected publication was removed, no gap reported",
                ctx
            );
            prop_assert!(
                !want.gap || page.gap,
                "{}: a selected publication of a since forgotten topic was removed, no gap reported",
                ctx
            );
            if !self.model.any_forgotten {
                prop_assert_eq!(page.gap, want.gap, "{}: gap", ctx);
            }
        }
        Ok(())
    }

    /// The checks made after every step, and the step's probes.
    async fn check(&mut self, probes: &[Probe], ids: &[String]) -> Result<(), TestCaseError> {
        let h = self.history.clone();
        prop_assert_eq!(
            ok(h.last().await, "last")?,
            self.model.newest_kept(),
            "last()"
        );
        for channel in CHANNELS.iter().chain([&NEVER]) {
            let position = ok(h.position(channel).await, "position")?;
            match self.model.position(channel) {
                Some(want) => prop_assert_eq!(&position, &want, "position of {}", channel),
                None => {
                    prop_assert_eq!(position.offset, 0, "position of unborn {}", channel);
                    self.model
                        .check_base(&position.epoch, &format!("position of unborn {channel}"))?;
                }
            }
            let top = position.offset;
            for (since, limit) in [(0, 1000), (0, 1), (top / 2, 2), (top, 1000)] {
                let (pubs, pos) = ok(h.read_channel(channel, since, limit).await, "read_channel")?;
                prop_assert_eq!(&pos, &position, "read_channel position of {}", channel);
                let want: Vec<&MPub> = self
                    .model
                    .pubs
                    .iter()
                    .filter(|p| p.kept && p.channel == *channel && p.offset > since)
                    .take(limit)
                    .collect();
                let got: Vec<u64> = pubs.iter().map(|p| p.seq).collect();
                let wanted: Vec<u64> = want.iter().map(|p| p.seq).collect();
                prop_assert_eq!(
                    got,
                    wanted,
                    "read_channel({}, since {}, limit {})",
                    channel,
                    since,
                    limit
                );
                for (p, m) in pubs.iter().zip(want) {
                    check_pub(p, m)?;
                }
            }
        }
        let last = self.model.last_seq();
        let mut asked: Vec<String> = ids.to_vec();
        for probe in probes {
            if !self.model.pubs.is_empty() {
                asked.push(
                    self.model.pubs[probe.pick % self.model.pubs.len()]
                        .id
                        .clone(),
                );
            }
            let after = probe.after % (last + 2);
            let upto = match probe.upto_kind {
                0 => u64::MAX,
                1 => last,
                2 => probe.upto % (last + 2),
                _ => after + 1 + probe.upto % 3,
            };
            self.check_replay(probe.selection, after, upto, probe.limit)
                .await?;
        }
        asked.push("urn:never-published".to_owned());
        for id in asked {
            self.check_seq_of(&id).await?;
        }
        Ok(())
    }

    async fn check_seq_of(&self, id: &str) -> Result<(), TestCaseError> {
        let got = ok(self.history.seq_of(id).await, "seq_of")?;
        let want = self.model.seq_of(id);
        prop_assert_eq!(got, want, "seq_of({})", id);
        Ok(())
    }

    /// Every selection from every cursor (the end of a case).
    async fn check_everything(&mut self) -> Result<(), TestCaseError> {
        let last = self.model.last_seq();
        for s in 0..self.selections.len() {
            for after in 0..=last + 1 {
                self.check_replay(s, after, u64::MAX, 1000).await?;
                self.check_replay(s, after, after + 2, 1).await?;
            }
        }
        let ids: Vec<String> = self.model.pubs.iter().map(|p| p.id.clone()).collect();
        for id in ids {
            self.check_seq_of(&id).await?;
        }
        Ok(())
    }
}

async fn run_case(
    kind: Kind,
    setup: Setup,
    steps: Vec<(Op, Vec<Probe>)>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut case = Case {
        history: open(kind, dir.path(), setup).expect("open the store"),
        model: Model::new(setup),
        selections: selections(),
    };
    let mut n = 0;
    for (op, probes) in steps {
        let kept_before: Vec<bool> = case.model.pubs.iter().map(|p| p.kept).collect();
        let mut ids = Vec::new();
        match op {
            Op::Append(specs) => {
                let drafts: Vec<Draft> = specs
                    .iter()
                    .map(|s| {
                        n += 1;
                        draft(s, n)
                    })
                    .collect();
                let got = ok(case.history.append(drafts.clone()).await, "append")?;
                case.model.append(&drafts, &got)?;
                ids.extend(drafts.iter().map(|d| d.id.clone()));
            }
            Op::RemoveChannel(i) => {
                let channel = CHANNELS.get(i).copied().unwrap_or(NEVER);
                ok(case.history.remove_channel(channel).await, "remove_channel")?;
                case.model.remove_channel(channel);
            }
            Op::Sweep => {
                let removed = ok(case.history.sweep().await, "sweep")?;
                let want = case.model.sweep();
                prop_assert_eq!(removed, want, "sweep's count of removed publications");
            }
            Op::Restart => {
                if let Kind::Disk = kind {
                    ok(case.history.close().await, "close")?;
                    // The store must be dropped before its file is opened again.
                    let placeholder = Arc::new(MemoryHistory::new(retention(setup)));
                    drop(std::mem::replace(&mut case.history, placeholder));
                    case.history = ok(open(kind, dir.path(), setup), "reopen")?;
                    // Reopened: everything must read back the same.
                }
            }
        }
        // `seq_of` is asked about the ids appended and removed by the step.
        for (p, was) in case.model.pubs.iter().zip(kept_before) {
            if was && !p.kept {
                ids.push(p.id.clone());
            }
        }
        case.check(&probes, &ids).await?;
    }
    case.check_everything().await
}

/// `cases` cases, and no regression file written into the tree (a
/// failure prints its minimal input).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

proptest! {
    #![proptest_config(config(64))]

    /// MemoryHistory against the model: positions, channel reads, replay
    /// pages and gaps, `seq_of`, `last` and sweep counts after every step,
    /// then every selection from every cursor at the end.
    #[test]
    fn memory_history_follows_the_model(setup in setup(), steps in steps()) {
        block_on(run_case(Kind::Memory, setup, steps))?;
    }
}

proptest! {
    // Fewer cases: opening and closing a redb file costs ~0.1 s in a debug
    // build, and restarts are what this property adds.
    #![proptest_config(config(32))]

    /// DiskHistory against the same model, with restarts: everything, the
    /// epochs and the hub-wide seq included, survives reopening the store.
    #[test]
    fn disk_history_follows_the_model(setup in setup(), steps in steps()) {
        block_on(run_case(Kind::Disk, setup, steps))?;
    }
}

// ---------------------------------------------------------------------------
// Regressions: minimal reproductions of the bugs the properties found
// (each failed before its fix).

/// Both stores, empty, with `retention`.
fn both_stores(
    retention: RetentionPolicy,
    dir: &std::path::Path,
) -> Vec<(&'static str, Arc<dyn History>)> {
    vec![
        ("memory", Arc::new(MemoryHistory::new(retention.clone()))),
        (
            "disk",
            Arc::new(DiskHistory::open(dir, retention, 1 << 20).expect("open disk history")),
        ),
    ]
}

fn plain(channel: &str, alternates: &[&str], id: Option<&str>) -> Draft {
    let mut d = Draft::to_channel(channel.into(), Bytes::from("x"), None, Default::default());
    d.alternates = alternates.iter().map(|t| (*t).to_owned()).collect();
    if let Some(id) = id {
        d.id = id.to_owned();
    }
    d
}

/// Found by the properties (bug 1, fixed). A publication removed from a topic that a sweep then
/// forgets is no longer reported as a gap: not by a pattern selection, and
/// not by an exact selection once the topic is born again. The trait says
/// `gap` is set "when a publication the selection would have selected after
/// `after` is no longer stored"; the stores only consult their `forgotten`
/// horizon for exact topics that do not exist at all.
///
/// In Mercure terms: a subscriber to `a` and `b` (or to `*`) whose
/// Last-Event-ID is b's event 1 resumes with no `earliest` signal and never
/// learns that a's event 2 existed.
#[test]
fn a_forgotten_topic_still_reports_its_gap() -> Result<(), HistoryError> {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let retention = RetentionPolicy::uniform(Retention {
            size: 10,
            ttl: Duration::from_secs(24 * 3600),
            meta_ttl: Duration::ZERO,
        });
        let url = url::Url::parse(HUB_URL).expect("hub url");
        let exact = |t| TopicMatcher::new(MatcherType::Exact, t, &url).expect("matcher");
        let wildcard = TopicMatcher::new(MatcherType::Urlpattern, "*", &url).expect("matcher");
        let mut problems = Vec::new();
        for (name, h) in both_stores(retention, dir.path()) {
            h.append(vec![plain("b", &[], None)]).await?; // seq 1
            h.append(vec![plain("a", &[], None)]).await?; // seq 2
            h.remove_channel("a").await?;
            h.sweep().await?; // forgets a: nothing kept, idle past meta_ttl 0
            let all = Arc::new(Selection::new(std::slice::from_ref(&wildcard)));
            let page = h.replay(all, 1, 10, 100).await?;
            if !page.gap {
                problems.push(format!("{name}: `*` after seq 1 lost seq 2, no gap"));
            }
            h.append(vec![plain("a", &[], None)]).await?; // seq 3: a born again
            let a_and_b = Arc::new(Selection::new(&[exact("a"), exact("b")]));
            let page = h.replay(a_and_b, 1, 10, 100).await?;
            let seqs: Vec<u64> = page.publications.iter().map(|p| p.seq).collect();
            assert_eq!(seqs, [3], "{name}");
            if !page.gap {
                problems.push(format!("{name}: a+b after seq 1 lost seq 2, no gap"));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        Ok(())
    })
}

/// Found by the properties (bug 2, fixed). `seq_of` is documented as "the hub-wide position of the
/// earliest stored publication with `id`", but the id index only remembers
/// the first publication that had the id when it was appended: once that
/// one is removed the id is unknown although a later publication with it is
/// stored, and the next publication with the id takes it over although an
/// earlier one is stored. Mercure lets publishers choose ids; with a
/// repeated id, the second answer makes a replay from that id skip what was
/// published between the two.
#[test]
fn seq_of_a_repeated_id_is_its_earliest_stored() -> Result<(), HistoryError> {
    block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let retention = RetentionPolicy::uniform(Retention {
            size: 1,
            ttl: Duration::from_secs(24 * 3600),
            meta_ttl: Duration::from_secs(24 * 3600),
        });
        let mut problems = Vec::new();
        for (name, h) in both_stores(retention, dir.path()) {
            h.append(vec![plain("a", &[], Some("dup"))]).await?; // seq 1
            h.append(vec![plain("b", &[], Some("dup"))]).await?; // seq 2
            h.append(vec![plain("a", &[], None)]).await?; // seq 3, trims seq 1
            let got = h.seq_of("dup").await?;
            if got != Some(2) {
                problems.push(format!("{name}: seq_of(dup) = {got:?}, seq 2 stored"));
            }
            h.append(vec![plain("c", &[], Some("dup"))]).await?; // seq 4
            let got = h.seq_of("dup").await?;
            if got != Some(2) {
                problems.push(format!(
                    "{name}: seq_of(dup) = {got:?}, seqs 2 and 4 stored"
                ));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        Ok(())
    })
}

/// Found by the properties (bug 3, fixed). `MemoryHistory::replay` panics ("range start is greater
/// than range end in BTreeSet") when `after >= upto` and the selection
/// selects an alternate topic it holds: `a.seqs.range(after + 1..=upto)`.
/// The disk store returns an empty page (it checks `after >= upto` first).
/// Mercure calls `replay` with `after` the subscriber's Last-Event-ID and
/// `upto` the hub's last fanned-out seq, so with `history.engine =
/// "memory"` a subscriber that is up to date (after == upto) and reconnects
/// to a topic that was published as an alternate makes the subscribe
/// request panic.
#[test]
fn memory_replay_from_the_newest_is_empty() -> Result<(), HistoryError> {
    block_on(async {
        let url = url::Url::parse(HUB_URL).expect("hub url");
        let x = TopicMatcher::new(MatcherType::Exact, "x", &url).expect("matcher");
        let h = MemoryHistory::new(RetentionPolicy::uniform(Retention {
            size: 1000,
            ttl: Duration::from_secs(3600),
            meta_ttl: Duration::from_secs(3600),
        }));
        h.append(vec![plain("a", &["x"], None)]).await?; // seq 1, also on x
        let page = h.replay(Arc::new(Selection::new(&[x])), 1, 1, 100).await?;
        assert!(page.publications.is_empty());
        Ok(())
    })
}
