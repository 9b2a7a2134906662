//! TCP connections whose reads are buffered *below* TLS, for every gRPC connection of hostshift
//! (the agents' server side, an agent pulling from its peer, the coordinator's client).
//!
//! rustls reads its socket in small steps — room for 4 KiB more than it holds, never more than
//! one TLS record (~16 KiB) at a time (`DeframerVecBuffer::prepare_read` in rustls 0.23) — so
//! the receiving agent of a 3 GB storage stream made 315,431 `recv` calls (about 10 KB each,
//! counted with `perf stat`), each a trip through the kernel's TCP receive path and tokio's
//! reactor. Under TLS, a [`READ_BUFFER`]-sized read buffer takes what the socket has in one call
//! and hands rustls its pieces from memory: 34,388 calls for the same bytes, at the price of one
//! more `memcpy` (cheaper than the calls it saves; `docs/BENCHMARKS.md`, "Fewer system calls and
//! one copy less per byte"). Writes pass straight through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::Uri;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes one read of the socket may take.
pub const READ_BUFFER: usize = 256 * 1024;

/// A TCP connection with Nagle's algorithm off and its reads buffered ([`READ_BUFFER`]).
#[derive(Debug)]
pub struct BufferedTcp(BufReader<TcpStream>);

impl BufferedTcp {
    /// Buffers the reads of `tcp` and turns Nagle's algorithm off (every call is a small
    /// request followed by a wait: delaying it only adds latency). A connection that cannot take
    /// the option is used as it is.
    pub fn new(tcp: TcpStream) -> Self {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a connection");
        }
        Self(BufReader::with_capacity(READ_BUFFER, tcp))
    }

    /// Connects to the host and port of `uri` (`scheme://host:port`, an IPv6 host in brackets).
    ///
    /// # Errors
    /// A URI without a host, or the connect's error.
    pub async fn connect(uri: &Uri) -> io::Result<Self> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::other(format!("address {uri} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        Ok(Self::new(TcpStream::connect((host, port)).await?))
    }

    /// The TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        self.0.get_ref()
    }
}

impl AsyncRead for BufferedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BufferedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// What a server learns about the connection: the same as for a bare [`TcpStream`] (so
/// `Request::remote_addr` and the peer certificates work as before).
impl Connected for BufferedTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

/// A connector for tonic's `Endpoint::connect_with_connector`: a [`BufferedTcp`] to the URI's
/// host and port. Over an `https://` URI tonic runs its TLS (`Endpoint::tls_config`) on top.
#[derive(Clone, Copy, Debug, Default)]
pub struct Connector;

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<BufferedTcp>>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<BufferedTcp>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move { BufferedTcp::connect(&uri).await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Many small reads of a buffered connection (as rustls makes them) return the bytes sent,
    /// in order, whatever the pieces on either side; writes pass through.
    #[tokio::test]
    async fn small_reads_of_a_buffered_connection_return_every_byte_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the listener's address");
        let sent: Vec<u8> = (0..3 * READ_BUFFER + 12_345)
            .map(|i| u8::try_from(i % 251).expect("below 251"))
            .collect();
        let expected = sent.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = BufferedTcp::new(tcp);
            for piece in sent.chunks(100_003) {
                conn.write_all(piece).await.expect("write");
            }
            conn.shutdown().await.expect("shut the writing side");
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer)
                .await
                .expect("read the answer");
            answer
        });
        let uri: Uri = format!("http://{addr}").parse().expect("a URI");
        let mut conn = BufferedTcp::connect(&uri).await.expect("connect");
        assert!(conn.tcp().nodelay().expect("read TCP_NODELAY"));
        assert_eq!(conn.connect_info().remote_addr, Some(addr));
        let mut got = Vec::new();
        let mut piece = [0u8; 4096];
        loop {
            let n = conn.read(&mut piece).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes read differ from the bytes sent");
        conn.write_all(b"thanks").await.expect("answer");
        conn.shutdown().await.expect("shut down");
        assert_eq!(server.await.expect("the server task"), b"thanks");
    }

    #[tokio::test]
    async fn a_uri_without_a_host_is_refused_with_its_text() {
        let uri = Uri::from_static("/just/a/path");
        let err = BufferedTcp::connect(&uri).await.expect_err("no host");
        assert!(err.to_string().contains("has no host"), "{err}");
    }
}
