//! gRPC translation for `service Agent`: requests in, [`super::tools`], [`super::disk`] and
//! [`super::inventory`] do the work, responses out.

use std::sync::Arc;

use hostshift_proto::v1::agent_server::Agent;
use hostshift_proto::v1::{
    DatabaseStatus, InfoRequest, InfoResponse, InventoryRequest, InventoryResponse, RootStatus,
};
use tonic::{Request, Response, Status};

use super::{disk, inventory, tools};
use crate::Ctx;
use crate::postgres::connect;

/// Serves `hostshift.v1.Agent`.
pub struct AgentInfoService {
    ctx: Arc<Ctx>,
}

impl AgentInfoService {
    /// A service over the agent's shared context.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

/// What the connecting role lacks to load a sync into its database (see docs/rds.md): nothing
/// for a superuser; else `CREATEROLE` (roles are created and the role is made a member of
/// them), the right to set `session_replication_role` (tried in a transaction that is rolled
/// back), and `CREATE` on the database (schemas, trusted extensions).
async fn load_missing(client: &tokio_postgres::Client) -> Vec<String> {
    let row = match client
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, current_user::text,
                    pg_catalog.has_database_privilege(current_database(), 'CREATE')
             FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            return vec![format!(
                "cannot read the connecting role: {}",
                connect::pg_message(&e)
            )];
        }
    };
    let (superuser, create_role, me, create): (bool, bool, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if superuser {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !create_role {
        missing.push(format!(
            "CREATEROLE (to create the database's roles and join them): ALTER ROLE \"{me}\" CREATEROLE"
        ));
    }
    let replica = client
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica; ROLLBACK")
        .await;
    if replica.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
        missing.push(format!(
            "the right to set session_replication_role (the data load needs it): as a superuser, \
             GRANT SET ON PARAMETER session_replication_role TO \"{me}\" (on RDS the master \
             user has it through rds_superuser)"
        ));
    }
    if !create {
        missing.push(format!(
            "CREATE on the database (schemas, extensions): GRANT CREATE ON DATABASE ... TO \"{me}\", \
             or create the database as this role"
        ));
    }
    missing
}

async fn database_status(
    db: &crate::config::DatabaseConfig,
    restore_target: bool,
) -> DatabaseStatus {
    let mut st = DatabaseStatus {
        name: db.name.clone(),
        ..Default::default()
    };
    match connect::connect(db).await {
        Err(e) => {
            st.problem = e.to_string();
            if st.problem.contains("(3D000)") {
                st.missing = true;
                st.dbname = connect::database_name(db)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                (st.can_create, st.create_problem) = crate::database::can_create(db).await;
                // The sync creates it in this cluster: its free space is read the same way,
                // through the maintenance database.
                match connect::connect_maintenance(db).await {
                    Ok(client) => data_dir_space(&client, &mut st).await,
                    Err(e) => st.data_dir_problem = format!("maintenance database: {e}"),
                }
            }
        }
        Ok(client) => {
            st.reachable = true;
            if restore_target {
                st.load_missing = load_missing(&client).await;
                st.follow_missing =
                    match crate::follow::apply::missing_apply_rights(&client, &db.name).await {
                        Ok((_, missing)) => missing,
                        Err(e) => vec![format!("cannot read the role's rights: {e}")],
                    };
            }
            if let Ok(row) = client.query_one("SHOW server_version", &[]).await {
                st.server_version = row.get(0);
            }
            data_dir_space(&client, &mut st).await;
        }
    }
    st
}

/// Free space on the filesystem of the cluster's data directory, or why it is unknown.
/// `data_directory` is readable by superusers and `pg_read_all_settings` members only, and it
/// is only this host's when the cluster runs here (not remote or managed).
async fn data_dir_space(client: &tokio_postgres::Client, st: &mut DatabaseStatus) {
    let dir: String = match client.query_one("SHOW data_directory", &[]).await {
        Ok(row) => row.get(0),
        Err(e) => {
            st.data_dir_problem = format!(
                "the role may not read data_directory (superuser or pg_read_all_settings): {}",
                connect::pg_message(&e)
            );
            return;
        }
    };
    let path = std::path::Path::new(&dir);
    match std::fs::symlink_metadata(path) {
        Ok(_) => match disk::fs_usage(path) {
            Ok((free, _)) => {
                st.data_dir_free_bytes = free;
                st.data_dir_known = true;
            }
            Err(e) => st.data_dir_problem = e.to_string(),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            st.data_dir_problem = format!(
                "the data directory {dir} is not on this host (a remote or managed database server)"
            );
        }
        Err(e) => st.data_dir_problem = format!("{dir}: {e}"),
    }
}

fn root_status(kind: &str, name: &str, path: &std::path::Path) -> RootStatus {
    let mut st = RootStatus {
        kind: kind.into(),
        name: name.into(),
        path: path.display().to_string(),
        exists: path.exists(),
        ..Default::default()
    };
    match disk::fs_usage(path) {
        Ok((free, total)) => {
            st.free_bytes = free;
            st.total_bytes = total;
        }
        Err(e) => st.problem = e.to_string(),
    }
    st
}

#[tonic::async_trait]
impl Agent for AgentInfoService {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let c = &self.ctx.config;
        let (tools, databases) = if req.get_ref().brief {
            (Vec::new(), Vec::new())
        } else {
            tokio::join!(
                tools::detect(c),
                futures::future::join_all(
                    c.databases
                        .iter()
                        .map(|d| database_status(d, c.allow.restore_databases.contains(&d.name)))
                )
            )
        };
        let mut roots: Vec<RootStatus> = c
            .storage
            .iter()
            .map(|s| root_status("storage", &s.name, &s.path))
            .collect();
        roots.extend(
            c.files
                .iter()
                .map(|f| root_status("file", &f.name, &f.path)),
        );
        let mut permits: Vec<String> = Vec::new();
        permits.extend(
            c.allow
                .restore_databases
                .iter()
                .map(|n| format!("restore-database:{n}")),
        );
        permits.extend(
            c.allow
                .write_storage
                .iter()
                .map(|n| format!("write-storage:{n}")),
        );
        permits.extend(
            c.allow
                .write_files
                .iter()
                .map(|n| format!("write-file:{n}")),
        );
        permits.extend(
            c.allow
                .freeze_databases
                .iter()
                .map(|n| format!("freeze-database:{n}")),
        );
        if c.allow.control_services {
            permits.push("control-services".into());
        }
        if c.sync_role.receives() {
            permits.push("sync-target".into());
        }
        if c.sync_role == crate::config::SyncRole::Either {
            permits.push("sync-either".into());
        }
        // A freeze undone by hand is noticed here, at the next contact.
        crate::database::freeze::forget_undone(&self.ctx).await;
        let frozen_databases = crate::database::freeze::frozen(&c.state_dir);
        Ok(Response::new(InfoResponse {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            role: c.role.clone(),
            agent_version: hostshift_shared::VERSION.into(),
            protocol_version: hostshift_proto::PROTOCOL_VERSION,
            identity: self.ctx.identity.to_string(),
            tools,
            databases,
            roots,
            permits,
            frozen_databases,
        }))
    }

    async fn inventory(
        &self,
        req: Request<InventoryRequest>,
    ) -> Result<Response<InventoryResponse>, Status> {
        let req = req.into_inner();
        let c = &self.ctx.config;
        for n in &req.databases {
            self.ctx.database(n)?;
        }
        for n in &req.storage {
            self.ctx.storage(n)?;
        }
        let dbs = c
            .databases
            .iter()
            .filter(|d| req.databases.is_empty() || req.databases.contains(&d.name));
        let sts = c
            .storage
            .iter()
            .filter(|s| req.storage.is_empty() || req.storage.contains(&s.name));
        let (databases, storage) = tokio::join!(
            futures::future::join_all(dbs.map(|d| inventory::database(d, req.row_counts))),
            futures::future::join_all(sts.map(inventory::storage)),
        );
        let files = c
            .files
            .iter()
            .map(|f| inventory::file(&f.name, &f.path))
            .collect();
        Ok(Response::new(InventoryResponse {
            databases,
            storage,
            files,
        }))
    }
}
