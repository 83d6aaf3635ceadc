//! The guest's executor (ABI v2): the futures of the requests a component is serving live
//! here, in linear memory, and nowhere else.
//!
//! The host never waits inside the guest. A [`call`] or a [`sleep`] asks the host to start the
//! operation and returns at once with its id; the task that awaits it is left pending and the
//! entry returns, so no Wasm frame is live while anything waits. The host later enters the
//! guest again with the result (`continuum_wake`), which wakes the task and polls it. Since the
//! futures and this executor's tables are ordinary memory, a checkpoint or a migration taken
//! between two entries carries half-done requests with it.
//!
//! Single-threaded and never re-entered (the host serialises entries), so the tables are plain
//! cells without borrow flags: a trap in the middle of a poll must not leave a flag set that
//! poisons every later entry.

use crate::rt::{Slot, host};
use crate::{CallError, Request, Response, abi};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// The task id of the periodic tick; the host numbers request tasks from 1.
pub(crate) const TICK: u32 = 0;

/// What a task ends with.
pub(crate) enum Out {
    Response(Response),
    Tick(Option<u32>),
}

type Task = Pin<Box<dyn Future<Output = Out>>>;

/// A host operation the guest waits on: its result once the host delivered it, and who to
/// wake then.
struct OpSlot {
    task: u32,
    result: Option<Vec<u8>>,
    waker: Option<Waker>,
}

static TASKS: Slot<BTreeMap<u32, Task>> = Slot::new();
static READY: Slot<VecDeque<u32>> = Slot::new();
static OPS: Slot<BTreeMap<u64, OpSlot>> = Slot::new();
/// The task being polled: the host attributes the calls it starts to it (for its deadline and
/// its place in a call chain).
static CURRENT: AtomicU32 = AtomicU32::new(TICK);

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop);

unsafe fn clone(p: *const ()) -> RawWaker {
    RawWaker::new(p, &VTABLE)
}

unsafe fn wake(p: *const ()) {
    READY.get().push_back(p as usize as u32);
}

unsafe fn drop(_: *const ()) {}

fn waker(task: u32) -> Waker {
    // SAFETY: the vtable's functions only use the pointer as the task number.
    unsafe { Waker::from_raw(RawWaker::new(task as usize as *const (), &VTABLE)) }
}

/// Add a task and make it ready; [`run`] polls it.
pub(crate) fn spawn(id: u32, fut: impl Future<Output = Out> + 'static) {
    TASKS.get().insert(id, Box::pin(fut));
    READY.get().push_back(id);
}

/// Poll every ready task until none is. A finished request answers through the host's
/// `respond`; a finished tick is returned when this entry is the tick (`tick_entry`), else
/// reported through `tick_done`.
pub(crate) fn run(tick_entry: bool) -> Option<Option<u32>> {
    let mut tick = None;
    while let Some(id) = READY.get().pop_front() {
        let Some(task) = TASKS.get().get_mut(&id) else {
            continue;
        };
        CURRENT.store(id, Ordering::Relaxed);
        let w = waker(id);
        let Poll::Ready(out) = task.as_mut().poll(&mut Context::from_waker(&w)) else {
            continue;
        };
        TASKS.get().remove(&id);
        match out {
            Out::Response(r) => host::respond(id, &abi::encode_response(&r)),
            Out::Tick(next) if tick_entry => tick = Some(next),
            Out::Tick(next) => host::tick_done(tick_code(next)),
        }
    }
    tick
}

/// The tick's answer on the wire: milliseconds to the next one, or -1 for none.
pub(crate) fn tick_code(next: Option<u32>) -> i32 {
    next.map_or(-1, |ms| ms.min(i32::MAX as u32) as i32)
}

/// The host delivers the result of operation `op`.
pub(crate) fn deliver(op: u64, result: Vec<u8>) {
    if let Some(slot) = OPS.get().get_mut(&op) {
        slot.result = Some(result);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
    run(false);
}

/// Drop a task the host gave up on (its deadline passed). With `forget` (the task trapped
/// mid-poll, so its future may be half-updated) it is leaked rather than dropped: running its
/// destructors could touch a broken state. A negative `task` means every task.
pub(crate) fn cancel(task: i32, forget: bool) {
    let ids: Vec<u32> = if task < 0 {
        TASKS.get().keys().copied().collect()
    } else {
        vec![task as u32]
    };
    for id in ids {
        let Some(t) = TASKS.get().remove(&id) else {
            continue;
        };
        if forget {
            std::mem::forget(t);
            OPS.get().retain(|_, slot| slot.task != id);
        } else {
            // Dropping its pending calls tells the host to forget them.
            std::mem::drop(t);
        }
    }
    // A trap may have cut the last run short: poll what it left ready.
    run(false);
}

pub(crate) fn tasks() -> usize {
    TASKS.get().len()
}

pub(crate) fn set_current(task: u32) {
    CURRENT.store(task, Ordering::Relaxed);
}

/// The task polled last: after a trap, the one that trapped.
pub(crate) fn current() -> u32 {
    CURRENT.load(Ordering::Relaxed)
}

/// A host operation from the awaiting side: started on the first poll, finished when its
/// result is delivered, and cancelled at the host if dropped before that.
struct Op(Option<u64>);

impl Op {
    fn poll(&mut self, cx: &mut Context<'_>, start: impl FnOnce(u32) -> u64) -> Poll<Vec<u8>> {
        let op = match self.0 {
            Some(op) => op,
            None => {
                let task = CURRENT.load(Ordering::Relaxed);
                let op = start(task);
                OPS.get().insert(
                    op,
                    OpSlot {
                        task,
                        result: None,
                        waker: None,
                    },
                );
                self.0 = Some(op);
                op
            }
        };
        let ops = OPS.get();
        let Some(slot) = ops.get_mut(&op) else {
            // Its task was forgotten after a trap and is being polled regardless: never ready.
            return Poll::Pending;
        };
        match slot.result.take() {
            Some(r) => {
                ops.remove(&op);
                self.0 = None;
                Poll::Ready(r)
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(op) = self.0
            && OPS.get().remove(&op).is_some()
        {
            host::cancel(op);
        }
    }
}

/// A request to another component, in flight: see [`call`].
pub struct Call {
    name: String,
    req: Vec<u8>,
    op: Op,
}

/// Send `req` to the component named `name`, wherever in the mesh it runs (here if it is
/// here), and wait for its answer. The call carries the caller's remaining deadline and its
/// place in the call chain; a failure is a [`CallError`] value, never a trap.
pub fn call(name: &str, req: Request) -> Call {
    Call {
        name: name.to_string(),
        req: abi::encode_request(&req),
        op: Op(None),
    }
}

impl Future for Call {
    type Output = Result<Response, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (name, req) = (&this.name, &this.req);
        this.op
            .poll(cx, |task| host::call(task, name, req))
            .map(|bytes| {
                abi::decode_result(&bytes).unwrap_or_else(|e| {
                    Err(CallError::Refused(
                        502,
                        format!("the host's answer did not decode: {e}"),
                    ))
                })
            })
    }
}

/// A timer: see [`sleep`].
pub struct Sleep {
    ms: u32,
    op: Op,
}

/// Wait `ms` milliseconds without holding the instance: other requests run meanwhile.
pub fn sleep(ms: u32) -> Sleep {
    Sleep { ms, op: Op(None) }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let ms = this.ms;
        this.op.poll(cx, |task| host::sleep(task, ms)).map(|_| ())
    }
}
