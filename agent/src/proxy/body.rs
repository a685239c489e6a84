//! The client's request body on its way upstream: streamed, bounded by
//! `limits.max_body_bytes`, and remembering whether it was the client's body
//! that failed (bad chunked framing, too large, reset), so such a failure is
//! answered as the client's error (400/413) and never counted against the
//! upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;

/// What went wrong with the client's body, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The client's framing broke or the client went away mid-body.
    Broken,
    /// More than the limit.
    TooLarge,
}

#[derive(Clone, Default)]
pub struct FaultCell(Arc<AtomicU8>);

impl FaultCell {
    pub fn get(&self) -> Fault {
        match self.0.load(Ordering::Acquire) {
            1 => Fault::Broken,
            2 => Fault::TooLarge,
            _ => Fault::None,
        }
    }

    fn set(&self, f: Fault) {
        let v = match f {
            Fault::None => 0,
            Fault::Broken => 1,
            Fault::TooLarge => 2,
        };
        self.0.store(v, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        left: u64,
        fault: FaultCell,
    }
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: u64, fault: FaultCell) -> Self {
        Self {
            inner,
            left: limit,
            fault,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.left {
                        this.fault.set(Fault::TooLarge);
                        return Poll::Ready(Some(Err("request body over the size limit".into())));
                    }
                    *this.left -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.fault.set(Fault::Broken);
                Poll::Ready(Some(Err(e.into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
