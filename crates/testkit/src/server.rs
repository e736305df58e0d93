//! The real server in-process, on an ephemeral loopback port (or a Unix socket), and tonic
//! clients to it.

use clap::Parser as _;
use endcall_sidecar::{
    probe, proto::v1::end_call_service_client::EndCallServiceClient, serve, Cli, Config,
    ListenAddr, Listener,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::PATIENCE;

pub type Client = EndCallServiceClient<Channel>;

pub struct TestServer {
    pub addr: ListenAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts a server with the given extra flags, on 127.0.0.1:0.
    pub async fn start(flags: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", flags).await
    }

    pub async fn start_on(listen: &str, flags: &[&str]) -> Self {
        let mut args = vec!["endcall-sidecar", "--listen", listen];
        args.extend_from_slice(flags);
        let config = Config::from(&Cli::parse_from(args).serve);
        let listener = Listener::bind(&config.listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server ran");
        });
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub async fn channel(&self) -> Channel {
        probe::connect(&self.addr, PATIENCE).await.expect("connect")
    }

    pub async fn client(&self) -> Client {
        EndCallServiceClient::new(self.channel().await)
    }

    /// Asks the server to shut down and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task");
    }
}
