//! Which replica writes status: the holder of a `coordination.k8s.io` Lease.
//!
//! In: the API client and the Lease's namespace, name and this replica's identity.
//! Out: `true`/`false` on a watch channel as leadership is won and lost. Every replica
//! serves traffic regardless; only status writes and Events depend on this.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use super::ControllerOptions;

/// How long a Lease is valid without renewal, in seconds.
const LEASE_SECONDS: u64 = 15;

/// Keeps competing for the Lease for the life of the process.
pub async fn elect(client: Client, options: ControllerOptions, leader_tx: watch::Sender<bool>) {
    loop {
        let manager = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
            .with_namespace(&options.lease_namespace)
            .with_identity(&options.identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(LEASE_SECONDS / 3)
            .build()
            .await;
        let manager = match manager {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, lease = %options.lease_name, namespace = %options.lease_namespace, "cannot use the status Lease; retrying (check RBAC for leases in this namespace)");
                leader_tx.send_replace(false);
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let (mut is_leader, task) = manager.watch().await;
        loop {
            let leading = *is_leader.borrow_and_update();
            if leader_tx.send_replace(leading) != leading {
                tracing::info!(identity = %options.identity, leading, "status writer leadership changed");
            }
            if is_leader.changed().await.is_err() {
                break;
            }
        }
        leader_tx.send_replace(false);
        if let Ok(Err(err)) = task.await {
            tracing::warn!(error = %err, "leader election stopped; restarting it");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
