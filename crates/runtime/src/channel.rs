//! Channels to other services: over the network to a peer in the split topology, or through
//! an in-process transport when the service runs in this process. Both are plain tonic
//! [`Channel`]s, so callers use the same generated clients either way.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How much an in-process connection buffers in each direction.
const IN_PROCESS_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("peer address {url:?} is invalid: {message}")]
pub struct InvalidPeer {
    pub url: String,
    pub message: String,
}

/// A lazily connected channel to a peer: creating it never blocks, a peer that is down turns
/// into UNAVAILABLE on the calls, and the channel reconnects when the peer is back.
pub fn network_channel(url: &str, connect_timeout: Duration) -> Result<Channel, InvalidPeer> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| InvalidPeer {
            url: url.to_owned(),
            message: error.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// The server end of the in-process transport: a stream of connections to serve.
pub type InProcessIncoming = UnboundedReceiverStream<Result<DuplexStream, std::io::Error>>;

/// A channel to this process's own services, and the connections it opens, which the server
/// serves with the same routes and layers as its TCP port. Created before the services so a
/// service can hold a client of another local one.
pub fn in_process_pair() -> (Channel, InProcessIncoming) {
    let (sender, receiver) = mpsc::unbounded_channel::<Result<DuplexStream, std::io::Error>>();
    let connector = tower::service_fn(move |_: Uri| {
        let sender = sender.clone();
        async move {
            let (client_end, server_end) = tokio::io::duplex(IN_PROCESS_BUFFER_BYTES);
            sender.send(Ok(server_end)).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "the in-process server has stopped",
                )
            })?;
            Ok::<_, std::io::Error>(TokioIo::new(client_end))
        }
    });
    // The URI is never resolved; it only names the origin in the requests.
    let channel = Endpoint::from_static("http://in-process.crm").connect_with_connector_lazy(connector);
    (channel, UnboundedReceiverStream::new(receiver))
}
