//! The bare tonic baseline: a tonic server on 127.0.0.1:0 serving only `grpc.health.v1`
//! (tonic-health), on a runtime of its own (a thread with as many workers as the machine has
//! cores, like the `crm` process) so that it does not share the load generator's workers.

use std::net::SocketAddr;
use std::sync::mpsc;

use anyhow::Context;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

/// A running echo server; [`EchoServer::stop`] shuts it down.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
}

impl EchoServer {
    pub fn start() -> anyhow::Result<EchoServer> {
        let (ready_sender, ready_receiver) = mpsc::channel::<anyhow::Result<SocketAddr>>();
        let (stop_sender, stop_receiver) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || {
                let ready = ready_sender.clone();
                let serve = move || -> anyhow::Result<()> {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .enable_all()
                        .thread_name("echo-worker")
                        .build()
                        .context("build the echo server's runtime")?;
                    runtime.block_on(async move {
                        let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                            .context("bind the echo server")?
                            .with_nodelay(Some(true));
                        let addr = incoming.local_addr().context("echo server address")?;
                        let (_reporter, health) = tonic_health::server::health_reporter();
                        let _ = ready.send(Ok(addr));
                        tonic::transport::Server::builder()
                            .add_service(health)
                            .serve_with_incoming_shutdown(incoming, async {
                                let _ = stop_receiver.await;
                            })
                            .await
                            .context("serve the echo baseline")
                    })
                };
                if let Err(error) = serve() {
                    let _ = ready_sender.send(Err(error));
                }
            })
            .context("spawn the echo server thread")?;
        let addr = ready_receiver
            .recv()
            .context("the echo server thread ended before it listened")??;
        Ok(EchoServer {
            addr,
            stop: stop_sender,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks the server to stop. Its thread is not joined: tonic's graceful shutdown can wait on
    /// long-lived HTTP/2 connections (STACK.md pitfall 6), and the process ends soon anyway.
    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}
