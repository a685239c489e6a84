//! Two futures driven by one task, each woken on its own: a downstream
//! HTTP/1.1 connection and the upstream connection bound to it
//! (`upstream/bound.rs`); a connection and its watchdog (`conn.rs`).
//!
//! Why not `select` or two tasks: every hand-off between the two (a request
//! queued for the upstream, its response head, each body chunk, the body's
//! demand) wakes the other side. As two tasks, each wake schedules a task,
//! often on the other worker (a futex wake and a cross-core hop). Polled
//! together with the task's own waker, each wake lands on the running task,
//! which tokio treats as a yield: it requeues the task and wakes a parked
//! worker. Here each side gets a waker that only marks it ready and, while
//! the task is inside [`Joint::poll`], does not wake the task at all: the
//! loop below polls what was marked until nothing is, then returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

const FIRST: u8 = 1;
const SECOND: u8 = 2;

/// Rounds of one poll before the task yields. A side that keeps waking
/// itself (tokio's cooperative budget does that once spent, which is also
/// checked) must not spin here.
const MAX_ROUNDS: usize = 32;

struct Shared {
    /// Which sides were woken since they were last polled.
    ready: AtomicU8,
    /// The task is inside `poll`: a wake is picked up by its loop.
    polling: AtomicBool,
    task: AtomicWaker,
}

struct Side {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for Side {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.ready.fetch_or(self.bit, Ordering::SeqCst);
        if !self.shared.polling.load(Ordering::SeqCst) {
            self.shared.task.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// Completes with whichever of the two completes first; the other is dropped with it.
    pub struct Joint<A, B> {
        #[pin]
        first: A,
        #[pin]
        second: B,
        shared: Arc<Shared>,
        wakers: [Waker; 2],
    }
}

impl<A: Future, B: Future<Output = A::Output>> Joint<A, B> {
    pub fn new(first: A, second: B) -> Self {
        let shared = Arc::new(Shared {
            ready: AtomicU8::new(FIRST | SECOND),
            polling: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let side = |bit| {
            Waker::from(Arc::new(Side {
                shared: shared.clone(),
                bit,
            }))
        };
        let wakers = [side(FIRST), side(SECOND)];
        Self {
            first,
            second,
            shared,
            wakers,
        }
    }
}

impl<A: Future, B: Future<Output = A::Output>> Future for Joint<A, B> {
    type Output = A::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        shared.task.register(cx.waker());
        shared.polling.store(true, Ordering::SeqCst);
        for _ in 0..MAX_ROUNDS {
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
            let mut ready = shared.ready.swap(0, Ordering::SeqCst);
            if ready == 0 {
                shared.polling.store(false, Ordering::SeqCst);
                // A wake from another thread between the swap and the store
                // saw `polling` and left the task asleep: look once more.
                ready = shared.ready.swap(0, Ordering::SeqCst);
                if ready == 0 {
                    return Poll::Pending;
                }
                shared.polling.store(true, Ordering::SeqCst);
            }
            if ready & SECOND != 0
                && let Poll::Ready(out) = this.second.as_mut().poll(&mut Context::from_waker(&this.wakers[1]))
            {
                shared.polling.store(false, Ordering::SeqCst);
                return Poll::Ready(out);
            }
            if ready & FIRST != 0
                && let Poll::Ready(out) = this.first.as_mut().poll(&mut Context::from_waker(&this.wakers[0]))
            {
                shared.polling.store(false, Ordering::SeqCst);
                return Poll::Ready(out);
            }
        }
        // Still being woken, or out of budget: let other tasks run, then
        // continue (the marks are kept for the next poll).
        shared.polling.store(false, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures_util::FutureExt as _;

    #[tokio::test]
    async fn both_sides_make_progress_and_the_first_decides_the_end() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        // The second side feeds the first and never completes.
        let second = async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
            let _ = done_rx.await;
            std::future::pending::<()>().await;
        };
        let first = async move {
            let v = rx.await.expect("value");
            drop(done_tx);
            v
        };
        assert_eq!(Joint::new(first, second.map(|()| 0)).await, 7);
        // Either side can end it.
        assert_eq!(Joint::new(std::future::pending::<u32>(), async { 8 }).await, 8);
    }

    #[tokio::test]
    async fn wakes_from_other_tasks_reach_either_side() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let (tx2, rx2) = tokio::sync::oneshot::channel::<u32>();
        let second = async move {
            while let Some(v) = rx.recv().await {
                if v == 3 {
                    let _ = tx2.send(v);
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::spawn(async move {
            for v in 1..=3 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tx.send(v).await.expect("send");
            }
        });
        assert_eq!(Joint::new(async { rx2.await.expect("3") }, second.map(|()| 0)).await, 3);
    }
}
