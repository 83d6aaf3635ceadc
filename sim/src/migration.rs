//! A migration in a scenario: the real source and target machines of the handshake, with the
//! page data left out. The scenario carries the messages (with its link delays plus the time
//! the pages take at its bandwidth) and learns when the component switched hosts.

use continuum_migrate::{
    Offer, Outcome, Report, Source, SourceAction, SourceConfig, Target, TargetAction, ToSource,
    ToTarget,
};

/// Both sides' step timeout, as a node's default `--migration-timeout`.
pub const STEP_TIMEOUT_MS: u64 = 10_000;

/// What the scenario must act on.
#[derive(Debug)]
pub enum Step {
    /// Deliver this message to the target after the link delay plus `bytes` at the bandwidth.
    Send {
        msg: ToTarget,
        bytes: u64,
    },
    /// Requests are held from now on.
    Frozen,
    /// The component is the target's now, at `epoch`; held requests go there.
    Switched {
        epoch: u64,
    },
    /// The migration failed before the switch; held requests are served where they were.
    Unfrozen,
    Finished(Result<Report, String>),
}

pub struct Migration {
    pub from: usize,
    pub to: usize,
    pub source: Source,
    target: Option<Target>,
    /// When the last round was captured (none yet: the next carries the whole state).
    captured_ms: Option<u64>,
    state_bytes: u64,
    dirty_bytes_per_s: u64,
}

impl Migration {
    pub fn new(
        now: u64,
        offer: Offer,
        from: usize,
        to: usize,
        dirty_bytes_per_s: u64,
    ) -> Migration {
        Migration {
            from,
            to,
            state_bytes: offer.memory_bytes,
            source: Source::new(
                now,
                offer,
                SourceConfig {
                    step_timeout_ms: STEP_TIMEOUT_MS,
                    ..SourceConfig::default()
                },
            ),
            target: None,
            captured_ms: None,
            dirty_bytes_per_s,
        }
    }

    /// The pages changed since the last capture (all of them the first time).
    fn capture(&mut self, now: u64) -> u64 {
        let bytes = match self.captured_ms {
            None => self.state_bytes,
            Some(since) => (now - since) * self.dirty_bytes_per_s / 1000,
        };
        self.captured_ms = Some(now);
        bytes
    }

    /// Carry out what the source machine asks, until it waits for an answer.
    pub fn drive(&mut self, now: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        let id = self.source.id();
        while let Some(action) = self.source.poll_action() {
            match action {
                SourceAction::Send(msg) => steps.push(Step::Send { msg, bytes: 0 }),
                SourceAction::SendModule => steps.push(Step::Send {
                    msg: ToTarget::Module {
                        id,
                        wasm: Vec::new(),
                    },
                    bytes: 0,
                }),
                SourceAction::SendRound { round } => {
                    let bytes = self.capture(now);
                    self.source.round_sent(now, round, bytes);
                    let msg = ToTarget::Pages {
                        id,
                        round,
                        pages: Vec::new(),
                    };
                    steps.push(Step::Send { msg, bytes });
                }
                SourceAction::FreezeAndSendFinal => {
                    steps.push(Step::Frozen);
                    let bytes = self.capture(now);
                    self.source.final_sent(now, bytes);
                    let msg = ToTarget::Final {
                        id,
                        pages: Vec::new(),
                        globals: Vec::new(),
                        snapshot_digest: [0; 32],
                        carried: Vec::new(),
                        handoff: Vec::new(),
                    };
                    steps.push(Step::Send { msg, bytes });
                }
                SourceAction::Switch { epoch } => steps.push(Step::Switched { epoch }),
                SourceAction::Unfreeze => steps.push(Step::Unfrozen),
                SourceAction::Finished(r) => steps.push(Step::Finished(r)),
            }
        }
        steps
    }

    /// The target's answer to `msg` (it accepts every offer: the scenario chose the target
    /// by the placement rules already).
    pub fn answer(&mut self, now: u64, msg: ToTarget) -> Option<ToSource> {
        Some(match (&mut self.target, msg) {
            (None, ToTarget::Offer(offer)) => {
                let (target, reply) = Target::new(now, offer, Ok(true), STEP_TIMEOUT_MS);
                self.target = target;
                reply
            }
            (Some(target), msg) => match target.expect(&msg) {
                Err(r) => r,
                Ok(()) => match msg {
                    ToTarget::Module { .. } => target.module_stored(now),
                    ToTarget::Part { .. } => target.part_applied(now),
                    ToTarget::Pages { round, .. } => target.round_applied(now, round),
                    ToTarget::Final { .. } => target.ready(now),
                    ToTarget::Commit { epoch, .. } => target.commit(epoch).0,
                    ToTarget::Abort { .. } => target.abort(),
                    ToTarget::Offer(_) => return None,
                },
            },
            (None, _) => return None,
        })
    }

    /// When the target's timer fires next (none once it is done or gone).
    pub fn target_deadline(&self) -> Option<u64> {
        self.target.as_ref().and_then(|t| t.poll_timeout())
    }

    pub fn target_timeout(&mut self, now: u64) -> Option<TargetAction> {
        self.target.as_mut()?.handle_timeout(now)
    }

    /// What the source said when the target asked how the migration ended.
    pub fn probe_answer(&mut self, now: u64, answer: Option<Outcome>) -> Option<TargetAction> {
        self.target.as_mut()?.probe_answer(now, answer)
    }

    pub fn target_is_host(&self) -> bool {
        self.target.as_ref().is_some_and(|t| t.is_host())
    }

    /// Whether the target side has nothing left to do (done, or never began).
    pub fn target_done(&self) -> bool {
        self.target.as_ref().is_none_or(|t| t.is_done())
    }

    /// The target's process died: what it staged in memory is gone (a host's copy is on disk).
    pub fn target_crashed(&mut self) {
        if !self.target_is_host() {
            self.target = None;
        }
    }
}
