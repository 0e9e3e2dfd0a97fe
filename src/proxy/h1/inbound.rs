//! The client side of an HTTP/1.x connection as a reader, and a request body read from it.
//!
//! In: the read half of a client connection (plain TCP or TLS) with the bytes already
//! read from it.
//! Out: [`Inbound`], which the server loop reads heads from, and [`H1Body`], which takes
//! the `Inbound` for as long as a request body is read and gives it back when the body
//! ends or is dropped, so the loop can read the next request where the body stopped.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio::net::tcp::OwnedReadHalf;

use super::codec::{ChunkedDecoder, Decoded, RequestFraming};

/// Read buffer granted at a time.
pub const READ_CHUNK: usize = 8 * 1024;

/// Something bytes are read from into a buffer: `Ok(0)` at end of stream.
pub trait ReadInto: Send {
    /// Reads what is there into `buf`.
    fn poll_read_into(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>>;
}

impl ReadInto for OwnedReadHalf {
    fn poll_read_into(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        poll_read_tcp(self.as_ref(), buf, cx)
    }
}

/// Any other reader (a TLS stream's read half).
pub struct AnyRead<R>(pub R);

impl<R: AsyncRead + Unpin + Send> ReadInto for AnyRead<R> {
    fn poll_read_into(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        // The spare room is zeroed first, which keeps this free of `unsafe`; TLS
        // decryption costs far more than that.
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        let mut read = tokio::io::ReadBuf::new(&mut buf[len..]);
        let polled = Pin::new(&mut self.0).poll_read(cx, &mut read);
        let n = read.filled().len();
        buf.truncate(len + n);
        ready!(polled)?;
        Poll::Ready(Ok(n))
    }
}

/// Reads what `stream` has into `buf`, growing it by [`READ_CHUNK`] when nearly full:
/// `Ok(0)` at end of stream. Shared by the client side and the upstream side.
pub fn poll_read_tcp(
    stream: &tokio::net::TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let spare = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(n) => {
                if n > 0 && n < spare {
                    // A short read drained the socket (what nginx assumes too): forget
                    // the readiness now rather than pay a read that would block later.
                    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// A client connection's read side and the bytes read from it but not yet used.
pub struct Inbound {
    read: Box<dyn ReadInto>,
    /// Read and not yet consumed: the rest of a head, a body, pipelined requests.
    pub buf: BytesMut,
}

impl Inbound {
    /// A reader over `read`, with `buf` already read from it.
    pub fn new(read: Box<dyn ReadInto>, buf: BytesMut) -> Box<Self> {
        Box::new(Inbound { read, buf })
    }

    /// Reads more into the buffer: `Ok(0)` at end of stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.poll_read_into(&mut self.buf, cx)
    }
}

/// Where an [`H1Body`] returns the connection's reader, and whether it read the body
/// to its end (the connection can then carry the next request).
pub type Home = Arc<Mutex<Option<(Box<Inbound>, bool)>>>;

/// Why a client's request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum H1BodyError {
    /// The chunked encoding was invalid.
    #[error("malformed chunked request body: {0}")]
    Malformed(&'static str),
    /// The client closed or reset the connection before the end of the body.
    #[error("the request body broke off: {0}")]
    Io(#[from] io::Error),
    /// The client sent no body byte within the client body timeout.
    #[error("the client sent no body byte within the client body timeout")]
    Stalled,
}

/// A request body read from an HTTP/1.x client connection as it is polled.
pub struct H1Body {
    inbound: Option<Box<Inbound>>,
    home: Home,
    framing: BodyLeft,
    /// Longest wait for the next byte (nginx's `client_body_timeout`).
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the body last had to wait for bytes, if it is waiting now.
    waiting_since: Option<tokio::time::Instant>,
}

enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

impl H1Body {
    /// The body of a request framed as `framing`, read from `inbound`, which goes back
    /// to `home` when the body ends or is dropped.
    pub fn new(inbound: Box<Inbound>, framing: RequestFraming, idle: Duration, home: Home) -> Self {
        let framing = match framing {
            RequestFraming::Empty => BodyLeft::Done,
            RequestFraming::Length(n) => BodyLeft::Length(n),
            RequestFraming::Chunked => BodyLeft::Chunked(ChunkedDecoder::new()),
        };
        H1Body {
            inbound: Some(inbound),
            home,
            framing,
            idle,
            timer: None,
            waiting_since: None,
        }
    }

    fn go_home(&mut self) {
        if let Some(inbound) = self.inbound.take() {
            let whole = matches!(self.framing, BodyLeft::Done);
            if let Ok(mut home) = self.home.lock() {
                *home = Some((inbound, whole));
            }
        }
    }

    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1BodyError>> {
        let Some(inbound) = self.inbound.as_mut() else {
            return Poll::Ready(Err(H1BodyError::Io(io::ErrorKind::UnexpectedEof.into())));
        };
        if let Poll::Ready(read) = inbound.poll_fill(cx) {
            self.waiting_since = None;
            return Poll::Ready(match read {
                Ok(0) => Err(H1BodyError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            });
        }
        ready!(crate::proxy::deadline::poll_idle(
            &mut self.timer,
            &mut self.waiting_since,
            self.idle,
            cx
        ));
        Poll::Ready(Err(H1BodyError::Stalled))
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        self.go_home();
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(inbound) = this.inbound.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut inbound.buf;
            match &mut this.framing {
                BodyLeft::Done => {
                    this.go_home();
                    return Poll::Ready(None);
                }
                BodyLeft::Length(left) => {
                    if !buf.is_empty() {
                        let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        let data = buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.framing = BodyLeft::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyLeft::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.framing = BodyLeft::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.framing = BodyLeft::Done;
                        continue;
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(err) => return Poll::Ready(Some(Err(H1BodyError::Malformed(err.0)))),
                },
            }
            if let Err(err) = ready!(this.poll_more(cx)) {
                return Poll::Ready(Some(Err(err)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, BodyLeft::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyLeft::Done => SizeHint::with_exact(0),
            BodyLeft::Length(n) => SizeHint::with_exact(n),
            BodyLeft::Chunked(_) => SizeHint::default(),
        }
    }
}
