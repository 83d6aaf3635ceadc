//! The live-migration handshake (README: Design), as two sans-IO state machines: the
//! source drives, the target answers. The transport is request/reply (every message to the
//! target gets exactly one answer), so the machines take the time and the answers as input and
//! return what the driver must do: send a message, capture and send a round of pages, freeze,
//! switch, resume. They hold no pages themselves.
//!
//! ```text
//! source                                   target
//! Offer ─────────────────────────────────▶ checks capacity, policy, federation
//!       ◀──────────────── Accepted{need_module} | Rejected
//! Module (only if the target lacks it) ──▶ verifies the digest, compiles
//!       ◀──────────────────────────────── ModuleStored
//! Pages round 0 (every live page) ───────▶ writes them into a blank instance
//!       ◀──────────────────────────────── RoundApplied      (the source keeps serving)
//! Pages round n (pages changed since) ───▶ ...until a round is small, stops shrinking,
//!       ◀──────────────────────────────── RoundApplied      or the round budget is spent
//! [freeze: hold new requests]
//! Final (last pages, globals, digest) ───▶ applies, checks the whole-state digest
//!       ◀──────────────────────────────── Ready             ── point of no return ──
//! [switch: the component is the target's; held and late requests go there]
//! Commit{epoch+1} ───────────────────────▶ becomes the host, announces epoch + 1
//!       ◀──────────────────────────────── Done
//! ```
//!
//! Before Ready, any failure (a refusal, an error, a lost connection, a timeout) aborts: the
//! source unfreezes and goes on serving; nothing was switched, so nothing is lost. After Ready
//! the source never resumes. A target left Ready without a Commit asks the source how the
//! migration ended; if the source is gone it takes over, since a source that reached Ready
//! never serves again.
//!
//! One window is in doubt: the source sent Final and heard nothing back, so the target may be
//! Ready, or even hosting already. The source stays frozen and asks, up to [`IN_DOUBT_ASKS`]
//! times (an Abort, which a target that is not yet the host obeys, and which a host answers
//! with Done), before it serves again; a Ready target likewise asks the source
//! [`TAKEOVER_PROBES`] times before it takes over. So a lost Ready, lost answers or a short cut
//! never leave two hosts: the first exchange that gets through decides for both. Only a
//! partition that outlasts both sides' patience in exactly that window still can (the epochs
//! in the directory then tell which copy is current); the simulator counts how often.

use crate::hash::Digest;
use crate::snapshot::Value;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

pub type MigrationId = u64;

/// How many times a source in doubt asks the target before it serves again.
pub const IN_DOUBT_ASKS: u32 = 3;
/// How many unanswered probes a Ready target waits out before it takes over.
pub const TAKEOVER_PROBES: u32 = 3;

/// What the source proposes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    pub id: MigrationId,
    pub name: String,
    pub version: String,
    #[serde(with = "serde_bytes")]
    pub module_digest: Digest,
    /// Linear memory the component holds now.
    pub memory_bytes: u64,
    /// The component's location epoch at the source; the target will host it at `epoch + 1`.
    pub epoch: u64,
    /// The federation the component may move within, if any.
    pub federation: Option<String>,
    /// Labels the host must carry.
    pub require: BTreeMap<String, String>,
    /// Its placement policy, which travels with it.
    #[serde(default)]
    pub policy: String,
}

/// Source to target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToTarget {
    Offer(Offer),
    Module {
        id: MigrationId,
        #[serde(with = "serde_bytes")]
        wasm: Vec<u8>,
    },
    /// Part of the pages of the `Pages` or `Final` that comes next, as encoded by
    /// `encode_pages`: a large round travels as parts of about a megabyte (see `split_round`),
    /// so that decoding one never holds up the other messages of the connection for long.
    Part {
        id: MigrationId,
        #[serde(with = "serde_bytes")]
        pages: Vec<u8>,
    },
    /// A pre-copy round: the pages changed since the previous round (round 0: every live
    /// page), as encoded by `encode_pages`; with the parts before it, if any.
    Pages {
        id: MigrationId,
        round: u32,
        #[serde(with = "serde_bytes")]
        pages: Vec<u8>,
    },
    /// After the freeze: the last changed pages, every global, the digest of the snapshot
    /// the target must now hold, and what the host keeps for the component beyond its state
    /// (the requests in flight and what they wait on; opaque here, empty if none).
    Final {
        id: MigrationId,
        #[serde(with = "serde_bytes")]
        pages: Vec<u8>,
        globals: Vec<Value>,
        #[serde(with = "serde_bytes")]
        snapshot_digest: Digest,
        #[serde(with = "serde_bytes", default, skip_serializing_if = "Vec::is_empty")]
        carried: Vec<u8>,
        /// The source's signed hand-off to the target (opaque here): the target's proof, to
        /// any node still holding the old copy, that the source gave the component away.
        #[serde(with = "serde_bytes", default, skip_serializing_if = "Vec::is_empty")]
        handoff: Vec<u8>,
    },
    Commit {
        id: MigrationId,
        epoch: u64,
    },
    Abort {
        id: MigrationId,
        reason: String,
    },
}

impl ToTarget {
    pub fn id(&self) -> MigrationId {
        match self {
            ToTarget::Offer(o) => o.id,
            ToTarget::Module { id, .. }
            | ToTarget::Part { id, .. }
            | ToTarget::Pages { id, .. }
            | ToTarget::Final { id, .. }
            | ToTarget::Commit { id, .. }
            | ToTarget::Abort { id, .. } => *id,
        }
    }
}

/// Target to source: the answer to each message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToSource {
    Accepted {
        id: MigrationId,
        need_module: bool,
        /// How the source may reach the target directly for the pages (opaque here: the
        /// node's own; empty if it may not, and the pages go as the other messages do).
        #[serde(with = "serde_bytes", default, skip_serializing_if = "Vec::is_empty")]
        direct: Vec<u8>,
    },
    Rejected {
        id: MigrationId,
        reason: String,
    },
    ModuleStored {
        id: MigrationId,
    },
    /// A `Part` was written.
    PartApplied {
        id: MigrationId,
    },
    RoundApplied {
        id: MigrationId,
        round: u32,
    },
    Ready {
        id: MigrationId,
    },
    Done {
        id: MigrationId,
    },
    /// The target could not do what the message asked (a bad page, a digest mismatch, ...).
    Failed {
        id: MigrationId,
        reason: String,
    },
    Aborted {
        id: MigrationId,
    },
}

/// How a migration ended, as the source tells a target that asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    InProgress,
    /// The source switched: the target hosts the component at `epoch`.
    Committed {
        epoch: u64,
    },
    Aborted,
}

#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Most pre-copy rounds before freezing regardless.
    pub max_rounds: u32,
    /// Freeze once a round carried at most this many bytes.
    pub converged_bytes: u64,
    /// Skip pre-copy: freeze at once and send everything in the final message.
    pub stop_and_copy: bool,
    /// Longest wait for any one answer.
    pub step_timeout_ms: u64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            max_rounds: 8,
            converged_bytes: 256 * 1024,
            stop_and_copy: false,
            step_timeout_ms: 30_000,
        }
    }
}

/// What the source's driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceAction {
    /// Send this message (it carries no pages).
    Send(ToTarget),
    /// Send the module.
    SendModule,
    /// Capture the pages changed since the last round (every live page for round 0), send
    /// them as `Pages { round }`, then report with [`Source::round_sent`].
    SendRound {
        round: u32,
    },
    /// Hold new requests, capture the last changed pages and the globals, send `Final`, then
    /// report with [`Source::final_sent`].
    FreezeAndSendFinal,
    /// The component is the target's now, at `epoch`: route there, forward held and late
    /// requests there, drop the local instance once `Finished`.
    Switch {
        epoch: u64,
    },
    /// The migration failed before the point of no return: serve again here.
    Unfreeze,
    Finished(Result<Report, String>),
}

/// What a migration did, for the CLI and metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub rounds: u32,
    /// Page bytes sent in pre-copy rounds, and in the final message.
    pub precopy_bytes: u64,
    pub final_bytes: u64,
    pub module_sent: bool,
    /// From the freeze to the target's Ready: how long requests were held.
    pub downtime_ms: u64,
    pub total_ms: u64,
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum SourceState {
    Offered,
    SendingModule,
    /// Waiting for the driver to send round `n`, or for the target to apply it.
    Round {
        round: u32,
        sent: bool,
    },
    Final {
        sent: bool,
    },
    /// Final went out and no answer came: asking the target how it stands before resuming.
    InDoubt {
        why: String,
        asked: u32,
    },
    Committing,
    Finished,
}

pub struct Source {
    offer: Offer,
    cfg: SourceConfig,
    state: SourceState,
    started: u64,
    deadline: u64,
    frozen_at: Option<u64>,
    round_bytes: Vec<u64>,
    report: Report,
    actions: VecDeque<SourceAction>,
}

impl Source {
    pub fn new(now: u64, offer: Offer, cfg: SourceConfig) -> Source {
        let mut s = Source {
            deadline: now + cfg.step_timeout_ms,
            state: SourceState::Offered,
            started: now,
            frozen_at: None,
            round_bytes: Vec::new(),
            report: Report::default(),
            actions: VecDeque::new(),
            offer: offer.clone(),
            cfg,
        };
        s.actions
            .push_back(SourceAction::Send(ToTarget::Offer(offer)));
        s
    }

    pub fn id(&self) -> MigrationId {
        self.offer.id
    }

    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    pub fn is_finished(&self) -> bool {
        self.state == SourceState::Finished
    }

    /// Whether the point of no return has passed (the target is ready, the source switched).
    pub fn is_committed(&self) -> bool {
        matches!(self.state, SourceState::Committing)
            || (self.state == SourceState::Finished && self.report.epoch != 0)
    }

    /// How this migration stands, for a target that asks.
    pub fn outcome(&self) -> Outcome {
        if self.is_committed() {
            Outcome::Committed {
                epoch: self.offer.epoch + 1,
            }
        } else if self.state == SourceState::Finished {
            Outcome::Aborted
        } else {
            Outcome::InProgress
        }
    }

    pub fn poll_action(&mut self) -> Option<SourceAction> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        (self.state != SourceState::Finished).then_some(self.deadline)
    }

    fn wait(&mut self, now: u64, state: SourceState) {
        self.state = state;
        self.deadline = now + self.cfg.step_timeout_ms;
    }

    /// No answer (a timeout, a lost connection). Once Final is out the target may be Ready or
    /// hosting, so ask before resuming; before that, or when asking failed too, give up.
    fn lost(&mut self, now: u64, reason: String) {
        let (why, asked) = match &self.state {
            SourceState::Final { sent: true } => (reason, 0),
            SourceState::InDoubt { why, asked } if *asked < IN_DOUBT_ASKS => (why.clone(), *asked),
            SourceState::InDoubt { why, .. } => {
                let why = format!("{why}; the target cannot be reached to resolve it ({reason})");
                return self.fail(now, why);
            }
            _ => return self.fail(now, reason),
        };
        self.actions.push_back(SourceAction::Send(ToTarget::Abort {
            id: self.offer.id,
            reason: format!("no answer to the final state ({why}); resolving"),
        }));
        let asked = asked + 1;
        self.wait(now, SourceState::InDoubt { why, asked });
    }

    fn fail(&mut self, now: u64, reason: String) {
        if self.state == SourceState::Finished {
            return;
        }
        if self.state == SourceState::Committing {
            // Past the point of no return: the component is the target's whatever happens.
            self.finish(now, Err(format!("after the switch: {reason}")));
            return;
        }
        if self.frozen_at.is_some() {
            self.actions.push_back(SourceAction::Unfreeze);
        }
        self.actions.push_back(SourceAction::Send(ToTarget::Abort {
            id: self.offer.id,
            reason: reason.clone(),
        }));
        self.finish(now, Err(reason));
    }

    fn finish(&mut self, now: u64, result: Result<(), String>) {
        self.state = SourceState::Finished;
        self.report.total_ms = now - self.started;
        self.actions
            .push_back(SourceAction::Finished(result.map(|()| self.report.clone())));
    }

    /// Give up before the point of no return (the operator cancelled, the node is stopping).
    pub fn abort(&mut self, now: u64, reason: &str) {
        if !self.is_committed() {
            self.fail(now, reason.to_string());
        }
    }

    fn next_after_module(&mut self, now: u64) {
        if self.cfg.stop_and_copy {
            self.freeze(now);
        } else {
            self.actions.push_back(SourceAction::SendRound { round: 0 });
            self.wait(
                now,
                SourceState::Round {
                    round: 0,
                    sent: false,
                },
            );
        }
    }

    /// The point of no return: the component is the target's from now on.
    fn switch(&mut self, now: u64) -> u64 {
        self.report.downtime_ms = now - self.frozen_at.unwrap_or(now);
        self.report.epoch = self.offer.epoch + 1;
        let epoch = self.report.epoch;
        self.actions.push_back(SourceAction::Switch { epoch });
        epoch
    }

    fn freeze(&mut self, now: u64) {
        self.frozen_at = Some(now);
        self.actions.push_back(SourceAction::FreezeAndSendFinal);
        self.wait(now, SourceState::Final { sent: false });
    }

    /// The driver sent round `round`, carrying `bytes` of pages.
    pub fn round_sent(&mut self, now: u64, round: u32, bytes: u64) {
        if self.state == (SourceState::Round { round, sent: false }) {
            self.round_bytes.push(bytes);
            self.report.rounds = round + 1;
            self.report.precopy_bytes += bytes;
            self.wait(now, SourceState::Round { round, sent: true });
        }
    }

    /// The driver froze the component and sent the final message, carrying `bytes` of pages.
    pub fn final_sent(&mut self, now: u64, bytes: u64) {
        if self.state == (SourceState::Final { sent: false }) {
            self.report.final_bytes = bytes;
            self.wait(now, SourceState::Final { sent: true });
        }
    }

    /// The target's answer to the last message.
    pub fn handle_reply(&mut self, now: u64, reply: ToSource) {
        match (&self.state, reply) {
            (_, ToSource::Rejected { reason, .. }) => {
                self.fail(now, format!("the target refused: {reason}"))
            }
            (_, ToSource::Failed { reason, .. }) => {
                self.fail(now, format!("the target failed: {reason}"))
            }
            (
                SourceState::Offered,
                ToSource::Accepted {
                    need_module: true, ..
                },
            ) => {
                self.report.module_sent = true;
                self.actions.push_back(SourceAction::SendModule);
                self.wait(now, SourceState::SendingModule);
            }
            (
                SourceState::Offered,
                ToSource::Accepted {
                    need_module: false, ..
                },
            )
            | (SourceState::SendingModule, ToSource::ModuleStored { .. }) => {
                self.next_after_module(now)
            }
            (
                &SourceState::Round { round, sent: true },
                ToSource::RoundApplied { round: r, .. },
            ) if r == round => {
                let bytes = self.round_bytes[round as usize];
                let shrinking = round == 0 || bytes < self.round_bytes[round as usize - 1];
                if round + 1 >= self.cfg.max_rounds
                    || bytes <= self.cfg.converged_bytes
                    || !shrinking
                {
                    self.freeze(now);
                } else {
                    self.actions
                        .push_back(SourceAction::SendRound { round: round + 1 });
                    self.wait(
                        now,
                        SourceState::Round {
                            round: round + 1,
                            sent: false,
                        },
                    );
                }
            }
            (SourceState::InDoubt { .. }, ToSource::Done { .. }) => {
                // The target took over while its Ready was lost: it is the host.
                self.switch(now);
                self.finish(now, Ok(()));
            }
            (SourceState::InDoubt { why, .. }, ToSource::Aborted { .. }) => {
                let why = format!("{why}; the target confirmed it dropped its copy");
                self.fail(now, why);
            }
            (SourceState::Final { sent: true }, ToSource::Ready { .. }) => {
                // The point of no return: switch at once, then tell the target.
                let epoch = self.switch(now);
                self.actions.push_back(SourceAction::Send(ToTarget::Commit {
                    id: self.offer.id,
                    epoch,
                }));
                self.wait(now, SourceState::Committing);
            }
            (SourceState::Committing, ToSource::Done { .. }) => self.finish(now, Ok(())),
            (_, other) => self.fail(now, format!("unexpected answer from the target: {other:?}")),
        }
    }

    /// A message did not get through, or its answer did not come back.
    pub fn handle_transport_error(&mut self, now: u64, why: &str) {
        self.lost(now, format!("lost the target: {why}"));
    }

    pub fn handle_timeout(&mut self, now: u64) {
        if self.state != SourceState::Finished && now >= self.deadline {
            self.lost(
                now,
                format!(
                    "the target did not answer within {} ms",
                    self.cfg.step_timeout_ms
                ),
            );
        }
    }
}

/// What the target's driver must do on a timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// The source went quiet before the point of no return: drop everything staged.
    Discard,
    /// Ready but no Commit: ask the source how the migration ended, then report with
    /// [`Target::probe_answer`].
    ProbeSource,
    /// Host the component at `epoch` and announce it.
    BecomeHost { epoch: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetState {
    Accepted { module: bool },
    Receiving { next_round: u32 },
    Ready,
    Probing,
    Host,
    Discarded,
}

pub struct Target {
    offer: Offer,
    state: TargetState,
    /// Probes of the source that went unanswered in a row.
    probes: u32,
    deadline: u64,
    /// How long a step may stay silent, and how long to wait for a Commit once ready.
    step_timeout_ms: u64,
}

impl Target {
    /// Answer an offer. `decision` is the node's verdict (capacity, labels, federation,
    /// policy): `Err(reason)` refuses, `Ok(have_module)` accepts.
    pub fn new(
        now: u64,
        offer: Offer,
        decision: Result<bool, String>,
        step_timeout_ms: u64,
    ) -> (Option<Target>, ToSource) {
        let id = offer.id;
        match decision {
            Err(reason) => (None, ToSource::Rejected { id, reason }),
            Ok(have_module) => (
                Some(Target {
                    offer,
                    state: TargetState::Accepted {
                        module: have_module,
                    },
                    deadline: now + step_timeout_ms,
                    step_timeout_ms,
                    probes: 0,
                }),
                ToSource::Accepted {
                    id,
                    need_module: !have_module,
                    direct: Vec::new(),
                },
            ),
        }
    }

    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    pub fn is_host(&self) -> bool {
        self.state == TargetState::Host
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, TargetState::Host | TargetState::Discarded)
    }

    /// Whether requests forwarded by the source should be served here (from Ready on).
    pub fn serves(&self) -> bool {
        matches!(
            self.state,
            TargetState::Ready | TargetState::Probing | TargetState::Host
        )
    }

    /// Check that `msg` may come now; `Err` is the answer to send instead of doing the work.
    pub fn expect(&self, msg: &ToTarget) -> Result<(), ToSource> {
        let id = self.offer.id;
        let ok = match (self.state, msg) {
            (TargetState::Accepted { module: false }, ToTarget::Module { .. }) => true,
            (
                TargetState::Accepted { module: true },
                ToTarget::Part { .. } | ToTarget::Pages { round: 0, .. } | ToTarget::Final { .. },
            ) => true,
            (TargetState::Receiving { .. }, ToTarget::Part { .. }) => true,
            (TargetState::Receiving { next_round }, ToTarget::Pages { round, .. }) => {
                *round == next_round
            }
            (TargetState::Receiving { .. }, ToTarget::Final { .. }) => true,
            (
                TargetState::Ready | TargetState::Probing | TargetState::Host,
                ToTarget::Commit { .. },
            ) => true,
            (_, ToTarget::Abort { .. }) => true,
            _ => false,
        };
        if ok && msg.id() == id {
            Ok(())
        } else {
            Err(ToSource::Failed {
                id,
                reason: format!("message out of order in state {:?}", self.state),
            })
        }
    }

    fn step(&mut self, now: u64, state: TargetState) {
        self.state = state;
        self.deadline = now + self.step_timeout_ms;
    }

    /// A part of the next pages was written: the source is alive, the state stays.
    pub fn part_applied(&mut self, now: u64) -> ToSource {
        self.deadline = now + self.step_timeout_ms;
        ToSource::PartApplied { id: self.offer.id }
    }

    pub fn module_stored(&mut self, now: u64) -> ToSource {
        self.step(now, TargetState::Accepted { module: true });
        ToSource::ModuleStored { id: self.offer.id }
    }

    pub fn round_applied(&mut self, now: u64, round: u32) -> ToSource {
        self.step(
            now,
            TargetState::Receiving {
                next_round: round + 1,
            },
        );
        ToSource::RoundApplied {
            id: self.offer.id,
            round,
        }
    }

    /// The final state is in place and checked: from here on the target serves what the
    /// source forwards.
    pub fn ready(&mut self, now: u64) -> ToSource {
        self.step(now, TargetState::Ready);
        ToSource::Ready { id: self.offer.id }
    }

    /// The work a message asked for failed: the source will abort.
    pub fn failed(&mut self, reason: String) -> ToSource {
        self.state = TargetState::Discarded;
        ToSource::Failed {
            id: self.offer.id,
            reason,
        }
    }

    /// Returns the answer, and whether the component must now be hosted (first Commit).
    pub fn commit(&mut self, epoch: u64) -> (ToSource, Option<TargetAction>) {
        let first = self.state != TargetState::Host;
        self.state = TargetState::Host;
        (
            ToSource::Done { id: self.offer.id },
            first.then_some(TargetAction::BecomeHost { epoch }),
        )
    }

    /// The source gives up, or (in doubt after Final) asks how things stand: a target that
    /// is not the host yet drops its copy; one that took over says Done, so the source switches
    /// instead of resuming.
    pub fn abort(&mut self) -> ToSource {
        let id = self.offer.id;
        if self.state == TargetState::Host {
            return ToSource::Done { id };
        }
        self.state = TargetState::Discarded;
        ToSource::Aborted { id }
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        (!self.is_done()).then_some(self.deadline)
    }

    pub fn handle_timeout(&mut self, now: u64) -> Option<TargetAction> {
        if self.is_done() || now < self.deadline {
            return None;
        }
        match self.state {
            TargetState::Ready => {
                self.step(now, TargetState::Probing);
                self.probes += 1;
                Some(TargetAction::ProbeSource)
            }
            // A probe that never answered counts as a source that is gone.
            TargetState::Probing => self.probe_answer(now, None),
            _ => {
                self.state = TargetState::Discarded;
                Some(TargetAction::Discard)
            }
        }
    }

    /// What the source said when asked (`None`: it could not be reached).
    pub fn probe_answer(&mut self, now: u64, answer: Option<Outcome>) -> Option<TargetAction> {
        if self.state != TargetState::Probing {
            return None;
        }
        let epoch = self.offer.epoch + 1;
        match answer {
            Some(Outcome::Committed { epoch }) => Some(
                self.commit(epoch)
                    .1
                    .unwrap_or(TargetAction::BecomeHost { epoch }),
            ),
            // Unanswered: ask again soon, a few times, in case the source is in doubt too.
            None if self.probes < TAKEOVER_PROBES => {
                self.state = TargetState::Ready;
                self.deadline = now + self.step_timeout_ms / 2;
                None
            }
            // A source that cannot be reached all this time is taken for gone: if it is, it
            // reached Ready, so it switched and will never resume.
            None => Some(
                self.commit(epoch)
                    .1
                    .unwrap_or(TargetAction::BecomeHost { epoch }),
            ),
            Some(Outcome::Aborted) => {
                self.state = TargetState::Discarded;
                Some(TargetAction::Discard)
            }
            Some(Outcome::InProgress) => {
                self.probes = 0;
                self.step(now, TargetState::Ready);
                None
            }
        }
    }
}
