//! One upstream HTTP/1.1 connection bound to one downstream HTTP/1.1
//! connection: its requests go one after another over it, with no pool
//! checkout and no hop to another task. The connection is driven by the
//! downstream connection's task ([`Driver`], beside hyper's server
//! connection in a `proxy::joint::Joint`) and closes with it.
//!
//! A connection is used again only after a clean exchange: the request
//! body sent whole and the response body read to its end. Anything else
//! (an error, a timeout, a body abandoned midway) drops it, and the next
//! request connects anew.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::idle::{Idle, IdleConns};
use crate::proxy::{BoxError, ProxyBody};

pub type Sender = SendRequest<ProxyBody>;
pub type Conn = Connection<TokioIo<TcpStream>, ProxyBody>;

/// The upstream side of one downstream connection.
pub struct Bound {
    state: Mutex<State>,
    /// The current request's body has been sent whole (or had none).
    request_sent: AtomicBool,
    /// Where the connection goes, idle and clean, when the downstream one ends.
    idle: Arc<IdleConns>,
}

#[derive(Default)]
struct State {
    /// The connection's sender while no request uses it, and its address.
    idle: Option<(SocketAddr, Sender)>,
    /// Counts connections: what a late `abandon` or `finish` refers to.
    generation: u64,
    /// A new connection for the driver to take up.
    next: Option<Conn>,
    /// The driver must drop the connection it drives.
    drop_current: bool,
    /// Wakes the driver.
    waker: Option<Waker>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bound {
    pub fn new(idle: Arc<IdleConns>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            request_sent: AtomicBool::new(false),
            idle,
        })
    }

    /// The idle sender to `target` and its generation, if there is one
    /// still open. One to another address (the configuration changed) is
    /// closed.
    pub fn take(&self, target: SocketAddr) -> Option<(Sender, u64)> {
        let mut st = lock(&self.state);
        match st.idle.take() {
            Some((addr, sender)) if addr == target && !sender.is_closed() => Some((sender, st.generation)),
            Some(_) => {
                st.drop_current = true;
                wake(&mut st);
                None
            }
            None => None,
        }
    }

    /// Hands a new connection to the driver (the previous one, if any, is
    /// closed); its generation.
    pub fn install(&self, conn: Conn) -> u64 {
        let mut st = lock(&self.state);
        st.idle = None;
        st.next = Some(conn);
        st.generation += 1;
        wake(&mut st);
        st.generation
    }

    /// The exchange on connection `generation` broke off: that connection
    /// is not used again.
    pub fn abandon(&self, generation: u64) {
        let mut st = lock(&self.state);
        if st.generation != generation {
            return;
        }
        st.idle = None;
        st.next = None;
        st.drop_current = true;
        wake(&mut st);
    }

    /// The exchange ended cleanly on the response side: `sender` is kept if
    /// the request side did too.
    fn finish(&self, target: SocketAddr, sender: Sender, generation: u64) {
        if !self.request_sent.load(Ordering::Acquire) {
            return self.abandon(generation);
        }
        let mut st = lock(&self.state);
        if st.generation == generation {
            st.idle = Some((target, sender));
        }
    }

    /// The request body to send, watched so the connection is reused only
    /// if it was sent whole.
    pub fn watch_request<B: Body>(self: &Arc<Self>, body: B) -> Watched<B> {
        self.request_sent.store(body.is_end_stream(), Ordering::Release);
        Watched {
            inner: body,
            bound: self.clone(),
        }
    }

    /// The response body, handing `sender` back for the next request when
    /// it has been read to its end.
    pub fn watch_response(self: &Arc<Self>, body: Incoming, give_back: GiveBack) -> Returning {
        Returning {
            inner: body,
            give_back: Some((self.clone(), give_back)),
        }
    }

    pub fn driver(self: &Arc<Self>) -> Driver {
        Driver {
            bound: self.clone(),
            conn: None,
        }
    }
}

fn wake(st: &mut State) {
    if let Some(w) = &st.waker {
        w.wake_by_ref();
    }
}

/// Drives the bound upstream connection; never completes (it ends when the
/// downstream connection does and drops it: then a connection idle after a
/// clean exchange goes to the client's idle list, any other is closed).
pub struct Driver {
    bound: Arc<Bound>,
    conn: Option<Conn>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let idle = {
            let mut st = lock(&self.bound.state);
            if st.drop_current || st.next.is_some() {
                return;
            }
            st.idle.take()
        };
        if let Some((target, sender)) = idle
            && !sender.is_closed()
        {
            self.bound.idle.put(Idle::new(target, sender, conn));
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        {
            let mut st = lock(&this.bound.state);
            if std::mem::take(&mut st.drop_current) {
                this.conn = None;
            }
            // Checked first: `take` on `None` would still copy the whole
            // (large) connection slot, on every poll.
            if st.next.is_some() {
                this.conn = st.next.take();
            }
            match &mut st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
        }
        if let Some(conn) = &mut this.conn
            && Pin::new(conn).poll(cx).is_ready()
        {
            // Closed by the upstream, or failed: the sender reports it.
            this.conn = None;
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// A request body that marks when it has been sent whole.
    pub struct Watched<B> {
        #[pin]
        inner: B,
        bound: Arc<Bound>,
    }
}

impl<B: Body> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = this.inner.as_mut().poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.bound.request_sent.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.bound.request_sent.store(true, Ordering::Release);
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that gives its connection back once read to its end,
    /// and abandons it if dropped before (or on an error).
    pub struct Returning {
        #[pin]
        inner: Incoming,
        give_back: Option<(Arc<Bound>, GiveBack)>,
    }

    impl PinnedDrop for Returning {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((bound, g)) = this.give_back.take() {
                if this.inner.is_end_stream() {
                    bound.finish(g.target, g.sender, g.generation);
                } else {
                    bound.abandon(g.generation);
                }
            }
        }
    }
}

/// What a response body hands back when it ends cleanly.
pub struct GiveBack {
    pub target: SocketAddr,
    pub sender: Sender,
    pub generation: u64,
}

impl Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some((bound, g)) = this.give_back.take() {
                    bound.finish(g.target, g.sender, g.generation);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some((bound, g)) = this.give_back.take() {
                    bound.abandon(g.generation);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
