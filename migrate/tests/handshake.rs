//! The migration handshake in virtual time: a source and a target machine joined by a
//! request/reply link that can lose either side at any step.

use continuum_migrate::{
    Offer, Outcome, Report, Source, SourceAction, SourceConfig, Target, TargetAction, ToSource,
    ToTarget,
};
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;

/// Where a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kill {
    Never,
    /// The target dies on receiving the n-th (from 1) message of this kind.
    TargetOn(&'static str, usize),
    /// The target dies after applying the final message, before its Ready reaches the source.
    TargetBeforeReady,
    /// The source dies right after it switched (after Ready, before Commit).
    SourceAfterReady,
    /// The target's Ready is lost on the way (the target lives on).
    ReadyLost,
}

struct World {
    now: u64,
    source: Source,
    target: Option<Target>,
    target_alive: bool,
    source_alive: bool,
    /// Bytes the driver "captures" for each round.
    dirty: Vec<u64>,
    kill: Kill,
    seen: BTreeMap<&'static str, usize>,
    log: Vec<String>,
    frozen: bool,
    switched: Option<u64>,
    hosted_by_target: Option<u64>,
    result: Option<Result<Report, String>>,
}

fn offer() -> Offer {
    Offer {
        id: 7,
        name: "counter".into(),
        version: "1".into(),
        module_digest: [1; 32],
        memory_bytes: 64 * MIB,
        epoch: 3,
        federation: None,
        require: BTreeMap::new(),
        policy: String::new(),
    }
}

impl World {
    fn new(cfg: SourceConfig, dirty: Vec<u64>, kill: Kill) -> World {
        World {
            now: 0,
            source: Source::new(0, offer(), cfg),
            target: None,
            target_alive: true,
            source_alive: true,
            dirty,
            kill,
            seen: BTreeMap::new(),
            log: Vec::new(),
            frozen: false,
            switched: None,
            hosted_by_target: None,
            result: None,
        }
    }

    /// The target's side of one message; `None` if the target is gone.
    fn at_target(&mut self, msg: ToTarget, have_module: bool) -> Option<ToSource> {
        let n = self.seen.entry(kind(&msg)).or_default();
        *n += 1;
        if !self.target_alive || self.kill == Kill::TargetOn(kind(&msg), *n) {
            self.target_alive = false;
            return None;
        }
        self.now += 1;
        if let ToTarget::Offer(o) = msg {
            let (target, reply) = Target::new(self.now, o, Ok(have_module), 5_000);
            self.target = target;
            return Some(reply);
        }
        let t = self.target.as_mut().expect("an offer came first");
        if let Err(reply) = t.expect(&msg) {
            return Some(reply);
        }
        Some(match msg {
            ToTarget::Module { .. } => t.module_stored(self.now),
            ToTarget::Part { .. } => t.part_applied(self.now),
            ToTarget::Pages { round, .. } => t.round_applied(self.now, round),
            ToTarget::Final { .. } => {
                let reply = t.ready(self.now);
                match self.kill {
                    Kill::TargetBeforeReady => {
                        self.target_alive = false;
                        return None;
                    }
                    Kill::ReadyLost => return None,
                    _ => {}
                }
                reply
            }
            ToTarget::Commit { epoch, .. } => {
                let (reply, action) = t.commit(epoch);
                if let Some(TargetAction::BecomeHost { epoch }) = action {
                    self.hosted_by_target = Some(epoch);
                }
                reply
            }
            ToTarget::Abort { .. } => t.abort(),
            ToTarget::Offer(_) => unreachable!(),
        })
    }

    fn send(&mut self, msg: ToTarget) {
        self.log.push(format!("send {}", kind(&msg)));
        match self.at_target(msg, false) {
            Some(reply) => self.source.handle_reply(self.now, reply),
            None => self
                .source
                .handle_transport_error(self.now, "connection closed"),
        }
    }

    fn run(&mut self) {
        for _ in 0..10_000 {
            while let Some(action) = self.source.poll_action() {
                if !self.source_alive {
                    break;
                }
                self.log
                    .push(format!("{action:?}").chars().take(40).collect());
                match action {
                    SourceAction::Send(ToTarget::Abort { id, reason })
                        if self.source.is_finished() =>
                    {
                        // A best-effort courtesy: the target may be gone already.
                        if self.target_alive {
                            let _ = self.at_target(ToTarget::Abort { id, reason }, false);
                        }
                    }
                    SourceAction::Send(msg) => self.send(msg),
                    SourceAction::SendModule => self.send(ToTarget::Module {
                        id: 7,
                        wasm: vec![],
                    }),
                    SourceAction::SendRound { round } => {
                        let bytes = self.dirty.get(round as usize).copied().unwrap_or(MIB);
                        self.now += bytes / MIB + 1;
                        self.source.round_sent(self.now, round, bytes);
                        self.send(ToTarget::Pages {
                            id: 7,
                            round,
                            pages: vec![],
                        });
                    }
                    SourceAction::FreezeAndSendFinal => {
                        self.frozen = true;
                        self.now += 2;
                        self.source.final_sent(self.now, 4096);
                        self.send(ToTarget::Final {
                            id: 7,
                            pages: vec![],
                            globals: vec![],
                            snapshot_digest: [0; 32],
                            carried: vec![],
                            handoff: vec![],
                        });
                    }
                    SourceAction::Switch { epoch } => {
                        self.switched = Some(epoch);
                        if self.kill == Kill::SourceAfterReady {
                            self.source_alive = false;
                        }
                    }
                    SourceAction::Unfreeze => self.frozen = false,
                    SourceAction::Finished(r) => self.result = Some(r),
                }
            }
            if self.result.is_some() || !self.source_alive {
                // Let the target's timers run out.
                while let Some(t) = self
                    .target
                    .as_mut()
                    .filter(|t| self.target_alive && !t.is_done())
                {
                    self.now = t.poll_timeout().unwrap();
                    match t.handle_timeout(self.now) {
                        Some(TargetAction::ProbeSource) => {
                            let answer = self.source_alive.then(|| self.source.outcome());
                            if let Some(TargetAction::BecomeHost { epoch }) =
                                t.probe_answer(self.now, answer)
                            {
                                self.hosted_by_target = Some(epoch);
                            }
                        }
                        Some(TargetAction::BecomeHost { epoch }) => {
                            self.hosted_by_target = Some(epoch)
                        }
                        Some(TargetAction::Discard) | None => {}
                    }
                }
                return;
            }
            self.now = self.source.poll_timeout().unwrap();
            self.source.handle_timeout(self.now);
        }
        panic!("the handshake did not end: {:?}", self.log);
    }
}

fn kind(m: &ToTarget) -> &'static str {
    match m {
        ToTarget::Offer(_) => "offer",
        ToTarget::Module { .. } => "module",
        ToTarget::Part { .. } => "part",
        ToTarget::Pages { .. } => "pages",
        ToTarget::Final { .. } => "final",
        ToTarget::Commit { .. } => "commit",
        ToTarget::Abort { .. } => "abort",
    }
}

#[test]
fn precopy_shrinks_rounds_then_freezes_switches_and_commits() {
    let mut w = World::new(
        SourceConfig::default(),
        vec![64 * MIB, MIB, 300 * 1024, 100 * 1024],
        Kill::Never,
    );
    w.run();
    let report = w.result.clone().unwrap().unwrap();
    assert_eq!(report.rounds, 4, "{:?}", w.log);
    assert_eq!(report.precopy_bytes, 64 * MIB + MIB + 400 * 1024);
    assert_eq!(report.final_bytes, 4096);
    assert!(report.module_sent);
    assert_eq!(report.epoch, 4);
    assert!(report.downtime_ms > 0 && report.downtime_ms < report.total_ms);
    assert_eq!(w.switched, Some(4));
    assert_eq!(w.hosted_by_target, Some(4));
    assert!(w.frozen, "a source that switched never unfreezes");
    assert_eq!(w.source.outcome(), Outcome::Committed { epoch: 4 });
}

#[test]
fn stop_and_copy_sends_everything_after_the_freeze() {
    let cfg = SourceConfig {
        stop_and_copy: true,
        ..SourceConfig::default()
    };
    let mut w = World::new(cfg, vec![], Kill::Never);
    w.run();
    let report = w.result.unwrap().unwrap();
    assert_eq!((report.rounds, report.precopy_bytes), (0, 0));
    assert!(!w.log.iter().any(|l| l.starts_with("SendRound")));
    assert_eq!(w.hosted_by_target, Some(4));
}

#[test]
fn rounds_stop_when_they_stop_shrinking_or_the_budget_is_spent() {
    let mut w = World::new(
        SourceConfig::default(),
        vec![64 * MIB, 10 * MIB, 10 * MIB, 10 * MIB],
        Kill::Never,
    );
    w.run();
    assert_eq!(w.result.unwrap().unwrap().rounds, 3);
    let cfg = SourceConfig {
        max_rounds: 2,
        ..SourceConfig::default()
    };
    let mut w = World::new(
        cfg,
        vec![64 * MIB, 32 * MIB, 16 * MIB, 8 * MIB],
        Kill::Never,
    );
    w.run();
    assert_eq!(w.result.unwrap().unwrap().rounds, 2);
}

#[test]
fn a_refusal_ends_the_migration_without_touching_the_component() {
    let mut source = Source::new(0, offer(), SourceConfig::default());
    assert!(matches!(
        source.poll_action(),
        Some(SourceAction::Send(ToTarget::Offer(_)))
    ));
    let (target, reply) = Target::new(1, offer(), Err("no room".into()), 5_000);
    assert!(target.is_none());
    source.handle_reply(2, reply);
    let actions: Vec<SourceAction> = std::iter::from_fn(|| source.poll_action()).collect();
    assert!(!actions.contains(&SourceAction::Unfreeze));
    assert!(
        matches!(actions.last(), Some(SourceAction::Finished(Err(e))) if e.contains("no room"))
    );
    assert_eq!(source.outcome(), Outcome::Aborted);
}

/// The target dies at each step before Ready: the source goes on serving (it unfreezes if it
/// froze), never switches, and the dead target never hosts anything.
#[test]
fn losing_the_target_before_ready_leaves_the_component_at_the_source() {
    let faults = [
        ("on the offer", Kill::TargetOn("offer", 1)),
        (
            "after the offer, on the module",
            Kill::TargetOn("module", 1),
        ),
        ("during pre-copy", Kill::TargetOn("pages", 2)),
        ("after the freeze", Kill::TargetOn("final", 1)),
        ("after restoring, before ready", Kill::TargetBeforeReady),
    ];
    for (when, kill) in faults {
        let mut w = World::new(
            SourceConfig::default(),
            vec![64 * MIB, 8 * MIB, 2 * MIB, MIB],
            kill,
        );
        w.run();
        let result = w
            .result
            .clone()
            .unwrap_or_else(|| panic!("{when}: no result"));
        assert!(result.is_err(), "{when}: {result:?}");
        assert!(!w.frozen, "{when}: the source must serve again");
        assert_eq!(w.switched, None, "{when}");
        assert_eq!(w.hosted_by_target, None, "{when}");
        assert_eq!(w.source.outcome(), Outcome::Aborted, "{when}");
    }
}

#[test]
fn losing_the_source_after_ready_leaves_the_target_serving() {
    let mut w = World::new(
        SourceConfig::default(),
        vec![64 * MIB, MIB, 100 * 1024],
        Kill::SourceAfterReady,
    );
    w.run();
    assert_eq!(w.switched, Some(4));
    assert!(w.target.as_ref().unwrap().serves());
    assert_eq!(
        w.hosted_by_target,
        Some(4),
        "the target takes over once the source is gone"
    );
}

#[test]
fn a_lost_ready_is_resolved_by_asking_the_target_before_resuming() {
    let mut w = World::new(
        SourceConfig::default(),
        vec![MIB, 100 * 1024],
        Kill::ReadyLost,
    );
    w.run();
    assert!(w.result.clone().unwrap().is_err());
    assert!(!w.frozen, "the source serves again");
    assert_eq!(w.switched, None);
    let t = w.target.as_ref().unwrap();
    assert!(!t.serves() && t.is_done(), "the target dropped its copy");
    assert_eq!(w.hosted_by_target, None);
    assert!(
        w.log.iter().any(|l| l == "send abort"),
        "the source asked before resuming: {:?}",
        w.log
    );
}

/// Ready was lost and the source was out of reach long enough for the target to take over:
/// when the source's question gets through, the target says Done and the source switches
/// instead of resuming, so there is never a second host.
#[test]
fn a_target_that_took_over_makes_an_in_doubt_source_switch() {
    let cfg = SourceConfig {
        stop_and_copy: true,
        step_timeout_ms: 1_000,
        ..SourceConfig::default()
    };
    let mut src = Source::new(0, offer(), cfg);
    let (mut target, accepted) = Target::new(1, offer(), Ok(true), 1_000);
    let t = target.as_mut().unwrap();
    assert!(matches!(
        src.poll_action(),
        Some(SourceAction::Send(ToTarget::Offer(_)))
    ));
    src.handle_reply(2, accepted);
    assert_eq!(src.poll_action(), Some(SourceAction::FreezeAndSendFinal));
    src.final_sent(3, 4096);
    let last = ToTarget::Final {
        id: 7,
        pages: vec![],
        globals: vec![],
        snapshot_digest: [0; 32],
        carried: vec![],
        handoff: vec![],
    };
    t.expect(&last).unwrap();
    let _lost = t.ready(4);
    // The source hears nothing: it stays frozen and asks.
    src.handle_timeout(1_003);
    let ask = src.poll_action();
    assert!(
        matches!(ask, Some(SourceAction::Send(ToTarget::Abort { .. }))),
        "{ask:?}"
    );
    assert_eq!(src.poll_action(), None, "no unfreeze while in doubt");
    assert_eq!(src.outcome(), Outcome::InProgress);
    // Meanwhile the target cannot reach the source either: after a few tries it takes over.
    let mut now = 1_004;
    let took_over = loop {
        now = t.poll_timeout().unwrap().max(now);
        assert_eq!(t.handle_timeout(now), Some(TargetAction::ProbeSource));
        if let Some(action) = t.probe_answer(now + 1, None) {
            break action;
        }
    };
    assert_eq!(took_over, TargetAction::BecomeHost { epoch: 4 });
    assert!(now > 2_000, "it asked more than once");
    // The question gets through.
    let Some(SourceAction::Send(abort)) = ask else {
        unreachable!()
    };
    t.expect(&abort).unwrap();
    src.handle_reply(1_500, t.abort());
    assert!(t.is_host());
    assert_eq!(src.poll_action(), Some(SourceAction::Switch { epoch: 4 }));
    assert!(matches!(
        src.poll_action(),
        Some(SourceAction::Finished(Ok(_)))
    ));
    assert_eq!(src.outcome(), Outcome::Committed { epoch: 4 });
}

#[test]
fn a_source_that_aborted_keeps_a_ready_target_from_taking_over() {
    // The target got the final state and said Ready, but the source never heard it, aborted,
    // and serves again. Asked, it says so; the target drops its copy.
    let (mut target, _) = Target::new(0, offer(), Ok(true), 1_000);
    let t = target.as_mut().unwrap();
    t.expect(&ToTarget::Final {
        id: 7,
        pages: vec![],
        globals: vec![],
        snapshot_digest: [0; 32],
        carried: vec![],
        handoff: vec![],
    })
    .unwrap();
    t.ready(1);
    assert!(t.serves());
    assert_eq!(t.handle_timeout(1_001), Some(TargetAction::ProbeSource));
    assert_eq!(t.probe_answer(1_002, Some(Outcome::InProgress)), None);
    assert_eq!(t.handle_timeout(2_002), Some(TargetAction::ProbeSource));
    assert_eq!(
        t.probe_answer(2_003, Some(Outcome::Aborted)),
        Some(TargetAction::Discard)
    );
    assert!(!t.serves());
}

#[test]
fn messages_out_of_order_are_refused_and_abort_the_migration() {
    let (mut target, _) = Target::new(0, offer(), Ok(true), 1_000);
    let t = target.as_mut().unwrap();
    let commit = ToTarget::Commit { id: 7, epoch: 4 };
    assert!(matches!(t.expect(&commit), Err(ToSource::Failed { .. })));
    let wrong_round = ToTarget::Pages {
        id: 7,
        round: 3,
        pages: vec![],
    };
    assert!(matches!(
        t.expect(&wrong_round),
        Err(ToSource::Failed { .. })
    ));
    let other_migration = ToTarget::Pages {
        id: 8,
        round: 0,
        pages: vec![],
    };
    assert!(t.expect(&other_migration).is_err());
    // A silent source: the target drops what it staged.
    assert_eq!(t.handle_timeout(1_000), Some(TargetAction::Discard));
}

#[test]
fn parts_of_a_round_are_taken_in_the_states_that_take_its_pages() {
    let offer = Offer {
        id: 7,
        name: "c".into(),
        version: "1".into(),
        module_digest: [1; 32],
        memory_bytes: 1 << 20,
        epoch: 1,
        federation: None,
        require: Default::default(),
        policy: String::new(),
    };
    let (t, _) = Target::new(0, offer, Ok(true), 1000);
    let mut t = t.unwrap();
    let part = ToTarget::Part {
        id: 7,
        pages: vec![],
    };
    t.expect(&part).unwrap();
    assert_eq!(t.part_applied(500), ToSource::PartApplied { id: 7 });
    // A part keeps the target alive: its step timer starts again.
    assert_eq!(t.poll_timeout(), Some(1500));
    t.expect(&ToTarget::Pages {
        id: 7,
        round: 0,
        pages: vec![],
    })
    .unwrap();
    assert!(
        t.expect(&ToTarget::Part {
            id: 8,
            pages: vec![]
        })
        .is_err()
    );
}
