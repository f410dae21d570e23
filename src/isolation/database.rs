//! The database layer of a tenant, measured as the tenant: the probe logs in
//! with the tenant's own credentials and tries what isolation must forbid,
//! reading the operator's canary, another tenant's schema and other tenants'
//! rows in the shared tables, after setting every session variable an
//! application might key tenancy on. The role's attributes, the server
//! version and the tables' row-level security are read from the catalogs as
//! the admin, so they are reported even when the tenant cannot log in (for
//! instance after its login was disabled because it became BYPASSRLS).
//!
//! Every write attempt runs in a transaction that is rolled back, whatever
//! happens. The password is used to log in and nowhere else; the details of
//! the findings are scrubbed of it all the same.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{Finding, IsolationState, LayerReport, SharedTable, fail, pass};
use crate::api::IsolationMode;
use crate::backends::DatabaseCredentials;
use crate::backends::postgres::RoleLimits;
use crate::backends::shared_tables::{
    self, CANARY_SCHEMA, CANARY_TABLE, CANARY_TENANT, TENANT_POLICY, TableSecurity, qualified,
};
use crate::naming::quote_ident;

/// The stable ids of the findings this probe reports. Per shared table the
/// ids are `rls.<schema>.<table>.<what>`, see [`check::table`].
pub mod check {
    use crate::isolation::SharedTable;

    pub const CONNECT: &str = "connect";
    pub const SUPERUSER: &str = "role.superuser";
    pub const BYPASSRLS: &str = "role.bypassrls";
    pub const REPLICATION: &str = "role.replication";
    pub const CREATEROLE: &str = "role.createrole";
    pub const CREATEDB: &str = "role.createdb";
    pub const MEMBERSHIPS: &str = "role.memberships";
    pub const SERVER_VERSION: &str = "server.version";
    pub const CANARY_READ: &str = "canary.read";
    pub const CANARY_WRITE: &str = "canary.write";
    pub const OTHER_SCHEMA: &str = "other.schema";
    pub const PUBLIC_CREATE: &str = "public.create";
    /// Only the owner holds privileges on the tenant's own schema.
    pub const SCHEMA_GRANTS: &str = "schema.grants";
    /// Which tenant the operator's mapping says the role acts for.
    pub const MAPPING: &str = "rls.mapping";
    /// Reported alone when no shared table is configured.
    pub const TABLES: &str = "rls.tables";
    /// The class's statement and idle-in-transaction timeouts on the role.
    pub const TIMEOUTS: &str = "role.timeouts";
    /// Exposure: databases beyond its own and the shared one that the
    /// tenant may connect to.
    pub const OTHER_DATABASES: &str = "exposure.databases";
    /// Exposure: other tenants' names, comments and function sources in the
    /// catalogs.
    pub const CATALOGS: &str = "exposure.catalogs";
    /// Exposure: roles that can act as the operator's admin.
    pub const ADMIN_MEMBERS: &str = "exposure.admin-members";

    pub const ENABLED: &str = "enabled";
    pub const FORCED: &str = "forced";
    pub const POLICY: &str = "policy";
    pub const PRIVILEGES: &str = "privileges";
    /// No view or function shows the table's rows past its policies.
    pub const EXPOSED: &str = "exposed";
    pub const READ: &str = "read";
    pub const WRITE: &str = "write";

    /// `rls.<schema>.<table>.<what>`.
    pub fn table(table: &SharedTable, what: &str) -> String {
        format!("rls.{}.{}.{what}", table.schema, table.table)
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of the admin's catalog read before the database checks are `Unknown`.
const ADMIN_READ_TRIES: u32 = 3;
const STATEMENT_TIMEOUT: &str = "5s";
/// The read check stops counting other tenants' rows here: one is too many,
/// and a shared table may be large.
const READ_LIMIT: i64 = 1000;
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Session settings applications (and tutorials) key tenancy on. The probe
/// sets each to another tenant before it reads and writes the shared tables:
/// a policy keyed on any of them would show that tenant's rows.
const SPOOFED_SETTINGS: [(&str, &str); 6] = [
    ("app.tenant_id", CANARY_TENANT),
    ("app.tenant", CANARY_TENANT),
    ("app.current_tenant", CANARY_TENANT),
    ("tenantry.tenant", CANARY_TENANT),
    ("tenantry.tenant_id", CANARY_TENANT),
    (
        "request.jwt.claims",
        r#"{"tenant_id":"__tenantry_canary__","role":"service_role"}"#,
    ),
];

/// A CVE, the first fixed (major, minor) of each affected major, and the
/// first major that shipped with the fix.
type RlsFix = (&'static str, &'static [(i32, i32)], i32);

/// Row-level security bypasses fixed in PostgreSQL minor releases. Majors
/// older than those listed never got the fix.
const RLS_FIXES: [RlsFix; 3] = [
    // Policies of a table with inheritance/partitions, or of a view's base,
    // ignored with a cached plan reused after a role change.
    (
        "CVE-2023-2455",
        &[(11, 20), (12, 15), (13, 11), (14, 8), (15, 3)],
        16,
    ),
    // A subquery's policies applied for the wrong role after SET ROLE or a
    // SECURITY DEFINER call, through a reused plan.
    (
        "CVE-2024-10976",
        &[(12, 21), (13, 17), (14, 14), (15, 9), (16, 5), (17, 1)],
        18,
    ),
    // Optimizer statistics let a leaky operator read rows a policy hides in
    // partitioning or inheritance hierarchies.
    (
        "CVE-2025-8713",
        &[(13, 22), (14, 19), (15, 14), (16, 10), (17, 6)],
        18,
    ),
];

/// Measures the database layer of tenants.
pub struct DatabaseProbe {
    /// The admin pool on the shared database (where the shared tables and
    /// the canary live).
    admin: PgPool,
    shared_tables: Vec<SharedTable>,
    role_limits: RoleLimits,
}

#[derive(sqlx::FromRow)]
struct ServerFacts {
    shared_database: String,
    version: String,
    version_num: i32,
    canary_exists: bool,
    mapping_exists: bool,
    /// The admin role's name.
    admin: String,
    /// Roles other than superusers that are members of the admin, directly
    /// or through other roles.
    admin_members: Vec<String>,
}

#[derive(Clone, Debug, Default, sqlx::FromRow)]
struct RoleFacts {
    rolsuper: bool,
    rolbypassrls: bool,
    rolreplication: bool,
    rolcreaterole: bool,
    rolcreatedb: bool,
    rolcanlogin: bool,
    member_of: Vec<String>,
}

const SERVER_SQL: &str = "SELECT current_database()::text AS shared_database, \
       current_setting('server_version') AS version, \
       current_setting('server_version_num')::int AS version_num, \
       to_regclass('tenantry_canary.canary') IS NOT NULL AS canary_exists, \
       to_regclass('tenantry.tenant_roles') IS NOT NULL AS mapping_exists, \
       current_user::text AS admin, \
       ARRAY(WITH RECURSIVE members(oid) AS ( \
               SELECT m.member FROM pg_auth_members m \
                WHERE m.roleid = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) \
               UNION SELECT m.member FROM pg_auth_members m JOIN members ON m.roleid = members.oid) \
             SELECT r.rolname::text FROM members JOIN pg_roles r ON r.oid = members.oid \
              WHERE NOT r.rolsuper ORDER BY 1) AS admin_members";

const ROLE_SQL: &str = "SELECT r.rolsuper, r.rolbypassrls, r.rolreplication, r.rolcreaterole, \
       r.rolcreatedb, r.rolcanlogin, \
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
              WHERE m.member = r.oid ORDER BY 1) AS member_of \
  FROM pg_roles r WHERE r.rolname = $1";

/// What an attempt as the tenant came to.
enum Attempt<T> {
    Done(T),
    /// Refused for lack of privilege (SQLSTATE 42501), which covers both
    /// "permission denied" and "new row violates row-level security policy".
    Denied(String),
    /// Any other error: the attempt proves nothing.
    Failed(String),
}

fn attempt<T>(result: Result<T, sqlx::Error>) -> Attempt<T> {
    match result {
        Ok(value) => Attempt::Done(value),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
            Attempt::Denied(e.message().to_string())
        }
        Err(e) => Attempt::Failed(describe(&e)),
    }
}

fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(e) => format!(
            "{} (SQLSTATE {})",
            e.message(),
            e.code().unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// Why the probe could not log in somewhere.
struct ConnectFailure {
    /// The server refused the role CONNECT on the database.
    denied: bool,
    detail: String,
}

impl DatabaseProbe {
    pub fn new(admin: PgPool, shared_tables: Vec<SharedTable>) -> Self {
        Self {
            admin,
            shared_tables,
            role_limits: RoleLimits::default(),
        }
    }

    /// The timeouts the class sets on each tenant role, checked by the probe.
    pub fn with_role_limits(mut self, limits: RoleLimits) -> Self {
        self.role_limits = limits;
        self
    }

    /// Whether the role carries the class's timeouts in its database (as
    /// the admin reads `pg_db_role_setting`; the probe's own session pins
    /// its statement_timeout, so asking the tenant's session would not tell).
    async fn timeouts_finding(&self, role: &str, database: &str) -> Finding {
        let settings = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar::<_, Vec<String>>(
                "SELECT coalesce((SELECT s.setconfig FROM pg_db_role_setting s \
                   JOIN pg_database d ON d.oid = s.setdatabase \
                   JOIN pg_roles r ON r.oid = s.setrole \
                  WHERE r.rolname = $1 AND d.datname = $2), '{}'::text[])",
            )
            .bind(role)
            .bind(database)
            .fetch_one(&self.admin),
        )
        .await;
        match settings {
            Err(e) => fail(check::TIMEOUTS, IsolationState::Unknown, describe(&e)),
            Ok(settings) => {
                let missing = self.role_limits.missing_from(&settings);
                if missing.is_empty() {
                    let set: Vec<String> = self
                        .role_limits
                        .settings()
                        .into_iter()
                        .map(|(name, value)| format!("{name} = {value}"))
                        .collect();
                    pass(
                        check::TIMEOUTS,
                        format!(
                            "role {role:?} has {} in database {database:?}",
                            set.join(", ")
                        ),
                    )
                } else {
                    let wanted: Vec<String> = missing
                        .iter()
                        .map(|(name, value)| format!("{name} = {value}"))
                        .collect();
                    fail(
                        check::TIMEOUTS,
                        IsolationState::Inert,
                        format!(
                            "role {role:?} lacks the class's {} in database {database:?} (it has {settings:?}); \
                             one tenant's long queries or idle transactions can hold the server for all (repaired on the next reconcile)",
                            wanted.join(", ")
                        ),
                    )
                }
            }
        }
    }

    /// Probes the tenant whose login role is `role`, acting for `tenant`, as
    /// it connects with `credentials` (its own database in mode Database,
    /// the shared one in mode Schema). `other_tenant_schema`, when given, is
    /// a schema of another tenant the role must not reach. The canary and
    /// the shared tables live in the shared database; a tenant of mode
    /// Database is probed there with the same credentials.
    pub async fn probe(
        &self,
        role: &str,
        tenant: &str,
        credentials: &DatabaseCredentials,
        mode: IsolationMode,
        other_tenant_schema: Option<&str>,
    ) -> LayerReport {
        let mut exposures = Vec::new();
        let mut findings = self
            .findings(
                role,
                tenant,
                credentials,
                mode,
                other_tenant_schema,
                &mut exposures,
            )
            .await;
        let password = credentials.password.expose_secret();
        if !password.is_empty() {
            for finding in findings.iter_mut().chain(exposures.iter_mut()) {
                if finding.detail.contains(password) {
                    finding.detail = finding.detail.replace(password, "[redacted]");
                }
            }
        }
        LayerReport::from_findings(findings).with_exposures(exposures)
    }

    async fn findings(
        &self,
        role: &str,
        tenant: &str,
        credentials: &DatabaseCredentials,
        mode: IsolationMode,
        other_tenant_schema: Option<&str>,
        exposures: &mut Vec<Finding>,
    ) -> Vec<Finding> {
        let (server, role_facts) = match self.admin_facts(role).await {
            Ok(facts) => facts,
            Err(e) => return admin_unreadable(&e),
        };
        let mut findings = role_findings(role, role_facts.as_ref());
        findings.push(version_finding(&server.version, server.version_num));
        exposures.extend(admin_members_exposure(&server.admin, &server.admin_members));
        if !self.role_limits.settings().is_empty() {
            findings.push(self.timeouts_finding(role, &credentials.database).await);
        }

        // Where the tenant logs in, and where the canary and shared tables are.
        let own_database = &credentials.database;
        let shared_database = &server.shared_database;
        let mut own = self.login(role, role_facts.as_ref(), credentials).await;
        findings.push(connect_finding(&own, credentials));
        let mut shared = match (&own, own_database != shared_database) {
            (Ok(_), true) => Some(self.connect(credentials, shared_database).await),
            _ => None,
        };

        if let Ok(conn) = own.as_mut() {
            let shared = shared.as_mut().and_then(|shared| shared.as_mut().ok());
            findings.extend(
                own_database_findings(
                    conn,
                    shared,
                    shared_database,
                    role,
                    credentials,
                    other_tenant_schema,
                    exposures,
                )
                .await,
            );
        }

        let mut shared_conn =
            match self.shared_connection(role, mode, shared_database, &mut own, &mut shared) {
                Ok(conn) => Some(conn),
                Err(instead) => {
                    findings.extend(instead);
                    None
                }
            };
        if let Some(conn) = shared_conn.as_deref_mut() {
            findings.extend(canary_findings(conn, server.canary_exists, shared_database).await);
        }
        findings.extend(
            self.shared_table_findings(role, tenant, server.mapping_exists, shared_conn)
                .await,
        );

        if let Ok(conn) = own {
            let _ = conn.close().await;
        }
        if let Some(Ok(conn)) = shared {
            let _ = conn.close().await;
        }
        findings
    }

    /// Logs in as the tenant unless the catalogs already show it cannot: the
    /// finding then names the cause (no such role, NOLOGIN) where the
    /// server's refusal would only say that authentication failed.
    async fn login(
        &self,
        role: &str,
        facts: Option<&RoleFacts>,
        credentials: &DatabaseCredentials,
    ) -> Result<PgConnection, ConnectFailure> {
        match facts {
            None => Err(ConnectFailure {
                denied: false,
                detail: format!("role {role:?} does not exist"),
            }),
            Some(facts) if !facts.rolcanlogin => Err(ConnectFailure {
                denied: false,
                detail: format!("login disabled: role {role:?} is NOLOGIN"),
            }),
            Some(_) => self.connect(credentials, &credentials.database).await,
        }
    }

    /// The shared database as the tenant: the same connection in mode
    /// Schema, a second one in mode Database. Without one, the findings that
    /// stand in for the canary's and the shared tables' checks, so that none
    /// of them goes missing from the report.
    fn shared_connection<'c>(
        &self,
        role: &str,
        mode: IsolationMode,
        shared_database: &str,
        own: &'c mut Result<PgConnection, ConnectFailure>,
        shared: &'c mut Option<Result<PgConnection, ConnectFailure>>,
    ) -> Result<&'c mut PgConnection, Vec<Finding>> {
        match (own, shared) {
            (Err(_), _) => Err(self.shared_unknown(
                "the probe could not log in as the tenant (see connect)",
            )),
            (Ok(conn), None) => Ok(conn),
            (Ok(_), Some(Ok(conn))) => Ok(conn),
            (Ok(_), Some(Err(failure))) if failure.denied && self.shared_tables.is_empty() => {
                // Nothing of the shared database is the tenant's: not being
                // let in at all is the strongest denial.
                Err(vec![
                    pass(
                        check::CANARY_READ,
                        format!(
                            "the tenant cannot connect to the shared database {shared_database:?}: {}",
                            failure.detail
                        ),
                    ),
                    pass(
                        check::CANARY_WRITE,
                        format!(
                            "the tenant cannot connect to the shared database {shared_database:?}"
                        ),
                    ),
                ])
            }
            (Ok(_), Some(Err(failure))) => Err(self.shared_unknown(&format!(
                "could not log in to the shared database {shared_database:?}, where the canary and the shared tables are: {}{}",
                failure.detail,
                if failure.denied && mode == IsolationMode::Database {
                    format!(
                        " (a tenant of mode Database needs CONNECT on it to use the shared tables: GRANT CONNECT ON DATABASE {} TO {}, which ensure_tenant_access grants)",
                        quote_ident(shared_database),
                        quote_ident(role)
                    )
                } else {
                    String::new()
                }
            ))),
        }
    }

    /// The checks run in the shared database, each `Unknown` for `why`: a
    /// check that could not run must not read as passed.
    fn shared_unknown(&self, why: &str) -> Vec<Finding> {
        let mut findings = vec![
            fail(check::CANARY_READ, IsolationState::Unknown, why),
            fail(check::CANARY_WRITE, IsolationState::Unknown, why),
        ];
        for table in &self.shared_tables {
            for what in [check::READ, check::WRITE] {
                findings.push(fail(
                    &check::table(table, what),
                    IsolationState::Unknown,
                    why,
                ));
            }
        }
        findings
    }

    /// The shared tables' findings. Their catalog side is read as the admin,
    /// so it is reported even when `conn`, the tenant's connection to the
    /// shared database, is missing; the reads and writes need it.
    async fn shared_table_findings(
        &self,
        role: &str,
        tenant: &str,
        mapping_exists: bool,
        mut conn: Option<&mut PgConnection>,
    ) -> Vec<Finding> {
        if self.shared_tables.is_empty() {
            return vec![pass(check::TABLES, "no shared tables are configured")];
        }
        let mut findings = vec![self.mapping_finding(role, tenant, mapping_exists).await];
        // Set once for the whole session, so every table is read and written
        // as a tenant claiming to be another.
        let settings = match conn.as_deref_mut() {
            Some(conn) => spoof_settings(conn).await,
            None => Vec::new(),
        };
        for table in &self.shared_tables {
            findings.extend(self.catalog_findings(table, role).await);
            if let Some(conn) = conn.as_deref_mut() {
                let others = self.other_rows_exist(table, tenant).await;
                findings.push(table_read(conn, table, tenant, &settings, others).await);
                findings.push(table_write(conn, table, tenant).await);
            }
        }
        findings
    }

    /// The server's and the role's facts, read as the admin. A pooled
    /// connection the network or the server dropped while idle fails its
    /// next query; such reads are tried again, so one dead connection does
    /// not turn every database check `Unknown`.
    async fn admin_facts(&self, role: &str) -> Result<(ServerFacts, Option<RoleFacts>), String> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.read_admin_facts(role).await {
                Err(e)
                    if tries < ADMIN_READ_TRIES
                        && crate::backends::postgres::is_transient_error(&e) =>
                {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await;
                }
                result => return result.map_err(|e| describe(&e)),
            }
        }
    }

    async fn read_admin_facts(
        &self,
        role: &str,
    ) -> Result<(ServerFacts, Option<RoleFacts>), sqlx::Error> {
        let server = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_as::<_, ServerFacts>(SERVER_SQL).fetch_one(&self.admin),
        )
        .await?;
        let role = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_as::<_, RoleFacts>(ROLE_SQL)
                .bind(role)
                .fetch_optional(&self.admin),
        )
        .await?;
        Ok((server, role))
    }

    /// Logs in as the tenant. The admin pool's options are the base so that
    /// TLS settings carry over; everything that identifies the admin is
    /// replaced. search_path is pinned (a client option wins over the
    /// role's own `ALTER ROLE ... SET`), so objects a tenant made cannot
    /// stand in for the catalog functions the probe calls.
    async fn connect(
        &self,
        credentials: &DatabaseCredentials,
        database: &str,
    ) -> Result<PgConnection, ConnectFailure> {
        let options = (*self.admin.connect_options())
            .clone()
            .host(&credentials.host)
            .port(credentials.port)
            .username(&credentials.username)
            .password(credentials.password.expose_secret())
            .database(database)
            .application_name("tenantry-probe")
            .options([
                ("statement_timeout", STATEMENT_TIMEOUT),
                ("search_path", crate::backends::postgres::ADMIN_SEARCH_PATH),
            ])
            .disable_statement_logging();
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(ConnectFailure {
                denied: matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE)),
                detail: format!(
                    "could not log in as {:?} to database {database:?}: {}",
                    credentials.username,
                    describe(&e)
                ),
            }),
            Err(_) => Err(ConnectFailure {
                denied: false,
                detail: format!(
                    "could not log in as {:?} to database {database:?}: no answer within {CONNECT_TIMEOUT:?}",
                    credentials.username
                ),
            }),
        }
    }

    async fn mapping_finding(&self, role: &str, tenant: &str, exists: bool) -> Finding {
        if !exists {
            return fail(
                check::MAPPING,
                IsolationState::Unknown,
                "tenantry.tenant_roles does not exist: the shared security has not been ensured",
            );
        }
        let mapped: Result<Option<String>, sqlx::Error> = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar("SELECT tenant FROM tenantry.tenant_roles WHERE role_name = $1")
                .bind(role)
                .fetch_optional(&self.admin),
        )
        .await;
        match mapped {
            Ok(Some(t)) if t == tenant => pass(
                check::MAPPING,
                format!("role {role:?} acts for tenant {tenant:?}"),
            ),
            Ok(Some(t)) => fail(
                check::MAPPING,
                IsolationState::Broken,
                format!(
                    "role {role:?} is mapped to tenant {t:?}, not {tenant:?}: it sees that tenant's rows"
                ),
            ),
            Ok(None) => fail(
                check::MAPPING,
                IsolationState::Unknown,
                format!(
                    "role {role:?} is not mapped to a tenant (it sees no shared row): its access has not been ensured"
                ),
            ),
            Err(e) => fail(check::MAPPING, IsolationState::Unknown, describe(&e)),
        }
    }

    /// enabled, forced, policy and privileges of one table, from the catalogs.
    async fn catalog_findings(&self, table: &SharedTable, role: &str) -> Vec<Finding> {
        let id = |what| check::table(table, what);
        let found = match self.admin.acquire().await {
            Ok(mut conn) => shared_tables::read_table_security(&mut conn, table)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(describe(&e)),
        };
        let found = match found {
            Ok(Some(found)) => found,
            Ok(None) => {
                return vec![fail(
                    &id(check::ENABLED),
                    IsolationState::Unknown,
                    format!(
                        "shared table {}.{} does not exist",
                        table.schema, table.table
                    ),
                )];
            }
            Err(e) => return vec![fail(&id(check::ENABLED), IsolationState::Unknown, e)],
        };
        let q = qualified(table);
        let mut findings = vec![
            if found.rls_enabled {
                pass(&id(check::ENABLED), "row-level security is enabled")
            } else {
                fail(
                    &id(check::ENABLED),
                    IsolationState::Broken,
                    format!(
                        "row-level security is disabled: every role with SELECT sees every tenant's rows (repair: ALTER TABLE {q} ENABLE ROW LEVEL SECURITY)"
                    ),
                )
            },
            if found.rls_forced {
                pass(
                    &id(check::FORCED),
                    "row-level security is forced (it applies to the owner too)",
                )
            } else {
                fail(
                    &id(check::FORCED),
                    IsolationState::Inert,
                    format!(
                        "row-level security is not forced: the table's owner {:?} bypasses it (repair: ALTER TABLE {q} FORCE ROW LEVEL SECURITY)",
                        found.owner
                    ),
                )
            },
            policy_finding(table, &found, role),
        ];
        findings.push(self.privileges_finding(table, &found, role).await);
        findings.push(self.exposed_finding(table, &found).await);
        findings
    }

    /// Views, materialized views and SECURITY DEFINER functions that show
    /// the table's rows past its policies: a materialized view is a copy no
    /// policy guards; a view or function runs the table's policies as its
    /// owner, and a superuser or BYPASSRLS owner skips them. (A view or
    /// function of the admin sees only the canary rows; one of a tenant only
    /// what the tenant policy gives the querying role.) Functions are found
    /// by their body naming the table, since PostgreSQL records no
    /// dependency for a function body.
    async fn exposed_finding(&self, table: &SharedTable, found: &TableSecurity) -> Finding {
        let id = check::table(table, check::EXPOSED);
        let exposing = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT format('%s %I.%I (owner %s)', \
                        CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END, \
                        vn.nspname, v.relname, pg_get_userbyid(v.relowner)) \
                   FROM pg_depend d \
                   JOIN pg_rewrite w ON w.oid = d.objid AND d.classid = 'pg_rewrite'::regclass \
                   JOIN pg_class v ON v.oid = w.ev_class \
                   JOIN pg_namespace vn ON vn.oid = v.relnamespace \
                   JOIN pg_roles o ON o.oid = v.relowner \
                  WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1 AND v.oid <> $1 \
                    AND (v.relkind = 'm' OR (v.relkind = 'v' AND (o.rolsuper OR o.rolbypassrls))) \
                 UNION \
                 SELECT format('SECURITY DEFINER function %I.%I (owner %s)', pn.nspname, p.proname, o.rolname) \
                   FROM pg_proc p \
                   JOIN pg_namespace pn ON pn.oid = p.pronamespace \
                   JOIN pg_roles o ON o.oid = p.proowner \
                  WHERE p.prosecdef AND (o.rolsuper OR o.rolbypassrls) \
                    AND strpos(lower(p.prosrc), lower($2)) > 0 \
                 ORDER BY 1",
            )
            .bind(found.oid)
            .bind(&table.table)
            .fetch_all(&self.admin),
        )
        .await;
        match exposing {
            Err(e) => fail(&id, IsolationState::Unknown, describe(&e)),
            Ok(objects) if objects.is_empty() => pass(
                &id,
                "no materialized view, and no view or SECURITY DEFINER function of a superuser or BYPASSRLS role, reads the table",
            ),
            Ok(objects) => fail(
                &id,
                IsolationState::Inert,
                format!(
                    "{} read the table past its row-level security: whoever may use them sees every tenant's rows \
                     (drop them, give them to a role without BYPASSRLS, or make views security_invoker)",
                    objects.join(", ")
                ),
            ),
        }
    }

    async fn privileges_finding(
        &self,
        table: &SharedTable,
        found: &TableSecurity,
        role: &str,
    ) -> Finding {
        let id = check::table(table, check::PRIVILEGES);
        let held: Result<Vec<String>, sqlx::Error> = crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar(
                "SELECT ARRAY(SELECT p FROM unnest(ARRAY['TRUNCATE', 'TRIGGER', 'REFERENCES']) p \
                     WHERE has_table_privilege(r.oid, $2, p)) \
               FROM pg_roles r WHERE r.rolname = $1",
            )
            .bind(role)
            .bind(found.oid)
            .fetch_optional(&self.admin),
        )
        .await
        .map(Option::unwrap_or_default);
        match held {
            Err(e) => fail(&id, IsolationState::Unknown, describe(&e)),
            Ok(held) if held.is_empty() => pass(&id, "no TRUNCATE, TRIGGER or REFERENCES"),
            Ok(held) => {
                let state = if held.iter().any(|p| p != "REFERENCES") {
                    IsolationState::Broken
                } else {
                    IsolationState::Inert
                };
                fail(
                    &id,
                    state,
                    format!(
                        "role {role:?} holds {} on it: TRUNCATE empties every tenant's rows (row-level security does not apply to it), a trigger runs in other tenants' sessions, REFERENCES reveals other tenants' keys (repair: REVOKE {} ON {} FROM {})",
                        held.join(", "),
                        held.join(", "),
                        qualified(table),
                        quote_ident(role)
                    ),
                )
            }
        }
    }

    /// Whether rows of other tenants exist at all: without them a read that
    /// sees none proves nothing, and the finding says so.
    async fn other_rows_exist(&self, table: &SharedTable, tenant: &str) -> Option<bool> {
        crate::metrics::sql(
            crate::metrics::Sql::Select,
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS DISTINCT FROM $1)",
                qualified(table),
                quote_ident(&table.tenant_column)
            )))
            .bind(tenant)
            .fetch_one(&self.admin),
        )
        .await
        .ok()
    }
}

/// Every other check starts from the role's and the server's facts, so
/// without the catalogs the probe stops at these.
fn admin_unreadable(e: &str) -> Vec<Finding> {
    let why = format!("could not read the catalogs as the admin: {e}");
    [
        check::CONNECT,
        check::SUPERUSER,
        check::BYPASSRLS,
        check::SERVER_VERSION,
    ]
    .into_iter()
    .map(|id| fail(id, IsolationState::Unknown, why.clone()))
    .collect()
}

fn connect_finding(
    own: &Result<PgConnection, ConnectFailure>,
    credentials: &DatabaseCredentials,
) -> Finding {
    match own {
        Ok(_) => pass(
            check::CONNECT,
            format!(
                "logged in as {:?} to database {:?}",
                credentials.username, credentials.database
            ),
        ),
        Err(failure) => fail(
            check::CONNECT,
            IsolationState::Unknown,
            failure.detail.clone(),
        ),
    }
}

/// What the tenant's own login reaches beyond its schema. `shared`, the
/// second login of a tenant of mode Database, is checked too: CREATE on
/// public or another tenant's schema there is as much a leak as in its own
/// database.
async fn own_database_findings(
    conn: &mut PgConnection,
    mut shared: Option<&mut PgConnection>,
    shared_database: &str,
    role: &str,
    credentials: &DatabaseCredentials,
    other_tenant_schema: Option<&str>,
    exposures: &mut Vec<Finding>,
) -> Vec<Finding> {
    let own_database = credentials.database.as_str();
    let mut findings = Vec::new();
    let mut per_db = vec![(own_database.to_string(), public_create(conn).await)];
    if let Some(conn) = shared.as_deref_mut() {
        per_db.push((shared_database.to_string(), public_create(conn).await));
    }
    findings.push(public_create_finding(role, per_db));
    findings.push(schema_grants_finding(conn, &credentials.schema).await);
    exposures.extend(
        catalog_exposures(conn, &[own_database, shared_database], &credentials.schema).await,
    );

    if let Some(other) = other_tenant_schema {
        let mut per_db = vec![(own_database.to_string(), other_schema(conn, other).await)];
        if let Some(conn) = shared {
            per_db.push((shared_database.to_string(), other_schema(conn, other).await));
        }
        // CONNECT to a database named like the other schema is a leak unless
        // that database is the tenant's own.
        let database = if other != own_database {
            other_database_connect(conn, other).await
        } else {
            Ok(None)
        };
        findings.push(other_schema_finding(other, per_db, database));
    }
    findings
}

/// A missing canary means the shared security was never ensured: the
/// finding says so, rather than probing and reporting the server's error.
async fn canary_findings(
    conn: &mut PgConnection,
    exists: bool,
    shared_database: &str,
) -> Vec<Finding> {
    if exists {
        let read = canary_read(conn).await;
        let write = canary_write(conn).await;
        return vec![read, write];
    }
    let why = format!(
        "the canary {CANARY_SCHEMA}.{CANARY_TABLE} does not exist in database {shared_database:?}: the shared security has not been ensured"
    );
    vec![
        fail(check::CANARY_READ, IsolationState::Unknown, why.clone()),
        fail(check::CANARY_WRITE, IsolationState::Unknown, why),
    ]
}

/// The findings on the role's attributes and memberships.
fn role_findings(role: &str, facts: Option<&RoleFacts>) -> Vec<Finding> {
    let ids = [
        check::SUPERUSER,
        check::BYPASSRLS,
        check::REPLICATION,
        check::CREATEROLE,
        check::CREATEDB,
        check::MEMBERSHIPS,
    ];
    let Some(f) = facts else {
        return ids
            .iter()
            .map(|id| {
                fail(
                    id,
                    IsolationState::Unknown,
                    format!("role {role:?} does not exist"),
                )
            })
            .collect();
    };
    let q = quote_ident(role);
    let superuser_remedy = superuser_remedy(&q, f);
    let flag = |id: &str, set: bool, name: &str, why: &str, remedy: &str| {
        if set {
            fail(
                id,
                IsolationState::Broken,
                format!("role {role:?} is {name}: {why}; {remedy}"),
            )
        } else {
            pass(id, format!("role {role:?} is not {name}"))
        }
    };
    vec![
        flag(
            check::SUPERUSER,
            f.rolsuper,
            "SUPERUSER",
            "it bypasses every privilege and every row-level security policy",
            &superuser_remedy,
        ),
        flag(
            check::BYPASSRLS,
            f.rolbypassrls,
            "BYPASSRLS",
            "it bypasses every row-level security policy, so the shared tables' policies do not apply to it",
            &superuser_remedy,
        ),
        flag(
            check::REPLICATION,
            f.rolreplication,
            "REPLICATION",
            "it can stream the whole cluster's data",
            &superuser_remedy,
        ),
        flag(
            check::CREATEROLE,
            f.rolcreaterole,
            "CREATEROLE",
            "it can create roles and grant itself other roles",
            &format!("the operator puts it back (ALTER ROLE {q} NOCREATEROLE)"),
        ),
        flag(
            check::CREATEDB,
            f.rolcreatedb,
            "CREATEDB",
            "it can create databases outside tenantry's control",
            &format!("the operator puts it back (ALTER ROLE {q} NOCREATEDB)"),
        ),
        memberships_finding(role, f),
    ]
}

/// The operator cannot take these attributes away itself (only a superuser
/// can), so the remedy is one statement, for all that are set, for a
/// superuser to run. `q` is the role, quoted.
fn superuser_remedy(q: &str, f: &RoleFacts) -> String {
    let flags: Vec<&str> = [
        (f.rolsuper, "NOSUPERUSER"),
        (f.rolbypassrls, "NOBYPASSRLS"),
        (f.rolreplication, "NOREPLICATION"),
    ]
    .into_iter()
    .filter_map(|(set, clause)| set.then_some(clause))
    .collect();
    format!("a superuser must run: ALTER ROLE {q} {};", flags.join(" "))
}

fn memberships_finding(role: &str, f: &RoleFacts) -> Finding {
    if f.member_of.is_empty() {
        return pass(
            check::MEMBERSHIPS,
            format!("role {role:?} is a member of no other role"),
        );
    }
    let names: Vec<String> = f.member_of.iter().map(|r| quote_ident(r)).collect();
    fail(
        check::MEMBERSHIPS,
        IsolationState::Broken,
        format!(
            "role {role:?} is a member of {}: it can SET ROLE to them and use their privileges (repair: REVOKE {} FROM {})",
            names.join(", "),
            names.join(", "),
            quote_ident(role)
        ),
    )
}

/// The CVEs of [`RLS_FIXES`] the server lacks the fix for, each with the
/// release that fixes it (None: no fix for that major, it is past its end
/// of life).
pub fn missing_rls_fixes(version_num: i32) -> Vec<(&'static str, Option<String>)> {
    let major = version_num / 10000;
    let minor = version_num % 10000;
    RLS_FIXES
        .iter()
        .filter_map(|(cve, fixed, first_major)| {
            if major >= *first_major {
                return None;
            }
            match fixed.iter().find(|(m, _)| *m == major) {
                Some((_, fixed_minor)) if minor >= *fixed_minor => None,
                Some((m, fixed_minor)) => Some((*cve, Some(format!("{m}.{fixed_minor}")))),
                None => Some((*cve, None)),
            }
        })
        .collect()
}

fn version_finding(version: &str, version_num: i32) -> Finding {
    let missing = missing_rls_fixes(version_num);
    if missing.is_empty() {
        let cves: Vec<&str> = RLS_FIXES.iter().map(|(cve, _, _)| *cve).collect();
        return pass(
            check::SERVER_VERSION,
            format!(
                "PostgreSQL {version}: has the fixes for the row-level security bypasses {}",
                cves.join(", ")
            ),
        );
    }
    let lacks: Vec<String> = missing
        .iter()
        .map(|(cve, fixed)| match fixed {
            Some(release) => format!("{cve} (fixed in {release})"),
            None => format!("{cve} (never fixed in this major version)"),
        })
        .collect();
    fail(
        check::SERVER_VERSION,
        IsolationState::Inert,
        format!(
            "PostgreSQL {version} lacks the fixes for row-level security bypasses {}: policies may be bypassed until the server is upgraded to the latest minor release of a supported major",
            lacks.join(", ")
        ),
    )
}

/// Whether the role may CREATE in schema `public` (None: no such schema).
/// Who else holds privileges on the tenant's schema: a grant to another
/// tenant (or to PUBLIC) made by hand opens it to them.
async fn schema_grants_finding(conn: &mut PgConnection, schema: &str) -> Finding {
    let others: Result<Vec<String>, sqlx::Error> = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar(
            "SELECT coalesce(array_agg(g ORDER BY g), '{}') FROM ( \
           SELECT DISTINCT CASE WHEN a.grantee = 0::pg_catalog.oid THEN 'PUBLIC' \
                                ELSE pg_get_userbyid(a.grantee)::text END AS g \
             FROM pg_namespace n, aclexplode(n.nspacl) a \
            WHERE n.nspname = $1 AND a.grantee <> n.nspowner) s",
        )
        .bind(schema)
        .fetch_one(conn),
    )
    .await;
    match others {
        Ok(others) if others.is_empty() => pass(
            check::SCHEMA_GRANTS,
            format!("only the owner holds privileges on schema {schema:?}"),
        ),
        Ok(others) => fail(
            check::SCHEMA_GRANTS,
            IsolationState::Broken,
            format!(
                "roles other than the owner hold privileges on schema {schema:?}: {}",
                others.join(", ")
            ),
        ),
        Err(e) => fail(
            check::SCHEMA_GRANTS,
            IsolationState::Unknown,
            format!("could not read the privileges of schema {schema:?}: {e}"),
        ),
    }
}

async fn public_create(conn: &mut PgConnection) -> Result<Option<bool>, String> {
    crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_scalar(
            "SELECT CASE WHEN to_regnamespace('public') IS NULL THEN NULL \
                ELSE has_schema_privilege('public', 'CREATE') END",
        )
        .fetch_one(conn),
    )
    .await
    .map_err(|e| describe(&e))
}

fn public_create_finding(
    role: &str,
    per_db: Vec<(String, Result<Option<bool>, String>)>,
) -> Finding {
    let mut can = Vec::new();
    let mut unknown = Vec::new();
    for (db, result) in &per_db {
        match result {
            Ok(Some(true)) => can.push(db.clone()),
            Ok(_) => {}
            Err(e) => unknown.push(format!("in database {db:?}: {e}")),
        }
    }
    let dbs: Vec<String> = per_db.iter().map(|(db, _)| format!("{db:?}")).collect();
    if !can.is_empty() {
        fail(
            check::PUBLIC_CREATE,
            IsolationState::Broken,
            format!(
                "role {role:?} can CREATE in schema public of database {}: objects there are visible to every role of the database (repair: REVOKE CREATE ON SCHEMA public FROM PUBLIC, and from {})",
                can.join(", "),
                quote_ident(role)
            ),
        )
    } else if !unknown.is_empty() {
        fail(
            check::PUBLIC_CREATE,
            IsolationState::Unknown,
            unknown.join("; "),
        )
    } else {
        pass(
            check::PUBLIC_CREATE,
            format!("no CREATE on schema public in database {}", dbs.join(", ")),
        )
    }
}

/// What the tenant can do with another tenant's schema, in one database.
struct OtherSchema {
    exists: bool,
    usage: bool,
    create: bool,
    /// A table of that schema, and the outcome of reading it.
    read: Option<(String, Attempt<()>)>,
}

async fn other_schema(conn: &mut PgConnection, schema: &str) -> Result<OtherSchema, String> {
    #[derive(sqlx::FromRow)]
    struct Row {
        exists: bool,
        usage: Option<bool>,
        create: Option<bool>,
        table: Option<String>,
    }
    let row = crate::metrics::sql(crate::metrics::Sql::Select, sqlx::query_as::<_, Row>(
        "SELECT n.oid IS NOT NULL AS exists, \
                has_schema_privilege(n.oid, 'USAGE') AS usage, \
                has_schema_privilege(n.oid, 'CREATE') AS create, \
                (SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = n.oid \
                    AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname LIMIT 1) AS table \
           FROM (SELECT to_regnamespace($1)::oid AS oid) n",
    )
    .bind(schema)
    .fetch_one(&mut *conn))
    .await
    .map_err(|e| describe(&e))?;
    let read = match &row.table {
        Some(table) => {
            let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
            let result = crate::metrics::sql(
                crate::metrics::Sql::Select,
                sqlx::query(AssertSqlSafe(format!("SELECT 1 FROM {name} LIMIT 1")))
                    .fetch_optional(&mut *conn),
            )
            .await
            .map(|_| ());
            Some((name, attempt(result)))
        }
        None => None,
    };
    Ok(OtherSchema {
        exists: row.exists,
        usage: row.usage.unwrap_or(false),
        create: row.create.unwrap_or(false),
        read,
    })
}

/// Where tenantry's ownership comments start: marks what is a tenant's.
const OWNERSHIP_COMMENT_PATTERN: &str = "tenantry.dev/managed-by=tenantry;%";

#[derive(sqlx::FromRow)]
struct CatalogView {
    databases: Vec<String>,
    other_roles: i64,
    other_functions: i64,
    other_relations: i64,
}

/// Roles that can act as the operator's admin. The admin may make itself a
/// member of any tenant role (it has to, to make a role an owner), so each
/// of them can reach every tenant's schema and rows, and no change in
/// tenantry can take that away: only not granting the admin to anyone can.
/// Reported on every tenant, as what stands outside its fence.
fn admin_members_exposure(admin: &str, members: &[String]) -> Option<Finding> {
    if members.is_empty() {
        return None;
    }
    let revokes: Vec<String> = members
        .iter()
        .map(|m| format!("REVOKE {} FROM {}", quote_ident(admin), quote_ident(m)))
        .collect();
    Some(fail(
        check::ADMIN_MEMBERS,
        IsolationState::Inert,
        format!(
            "roles {members:?} are members of the operator's admin role {admin:?}: each can act as the admin, \
             which can make itself a member of this tenant's role and read its data; \
             use the admin for tenantry alone ({})",
            revokes.join("; ")
        ),
    ))
}

/// What the tenant sees of others that PostgreSQL does not let tenantry
/// take away, read as the tenant: databases it may connect to besides
/// `own` (a PUBLIC CONNECT its owner kept, as on `postgres`), and the
/// catalogs' view of other tenants (role names and comments in the shared
/// catalogs; in this database, other tenants' tables and
/// functions, with their source).
async fn catalog_exposures(conn: &mut PgConnection, own: &[&str], schema: &str) -> Vec<Finding> {
    let own: Vec<String> = own.iter().map(|d| d.to_string()).collect();
    let seen = crate::metrics::sql(
        crate::metrics::Sql::Select,
        sqlx::query_as::<_, CatalogView>(
            "SELECT ARRAY(SELECT d.datname::text FROM pg_database d \
                    WHERE d.datallowconn AND NOT d.datistemplate \
                      AND NOT (d.datname = ANY($1)) \
                      AND has_database_privilege(d.oid, 'CONNECT') ORDER BY 1) AS databases, \
                    (SELECT count(*) FROM pg_roles r WHERE r.rolname <> current_user \
                      AND shobj_description(r.oid, 'pg_authid') LIKE $2) AS other_roles, \
                    (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                      WHERE n.nspname <> $3 AND obj_description(n.oid, 'pg_namespace') LIKE $2) AS other_functions, \
                    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                      WHERE n.nspname <> $3 AND obj_description(n.oid, 'pg_namespace') LIKE $2) AS other_relations",
        )
        .bind(&own)
        .bind(OWNERSHIP_COMMENT_PATTERN)
        .bind(schema)
        .fetch_one(conn),
    )
    .await;
    let seen = match seen {
        Ok(seen) => seen,
        Err(e) => {
            return vec![fail(
                check::CATALOGS,
                IsolationState::Unknown,
                format!(
                    "could not read the catalogs as the tenant: {}",
                    describe(&e)
                ),
            )];
        }
    };
    let mut exposures = Vec::new();
    if !seen.databases.is_empty() {
        let revokes: Vec<String> = seen
            .databases
            .iter()
            .map(|d| format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", quote_ident(d)))
            .collect();
        exposures.push(fail(
            check::OTHER_DATABASES,
            IsolationState::Inert,
            format!(
                "the tenant may connect to databases {:?} (PUBLIC holds CONNECT there, and tenantry does not own them); \
                 their owner can run: {}",
                seen.databases,
                revokes.join("; ")
            ),
        ));
    }
    if seen.other_roles + seen.other_functions + seen.other_relations > 0 {
        exposures.push(fail(
            check::CATALOGS,
            IsolationState::Inert,
            format!(
                "the catalogs show the tenant {} other tenants' roles (names, and tenantry's comments with their uids), \
                 and {} tables and {} functions (with their source) in other tenants' schemas of this database: \
                 PostgreSQL shows its catalogs to every role, so names, comments and function bodies must hold no secret",
                seen.other_roles, seen.other_relations, seen.other_functions
            ),
        ));
    }
    exposures
}

/// Whether the role may connect to a database named like the other
/// tenant's schema (a tenant of mode Database has both names alike).
async fn other_database_connect(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<bool>, String> {
    crate::metrics::sql(crate::metrics::Sql::Select, sqlx::query_scalar(
        "SELECT has_database_privilege(d.oid, 'CONNECT') FROM pg_database d WHERE d.datname = $1",
    )
    .bind(name)
    .fetch_optional(conn))
    .await
    .map_err(|e| describe(&e))
}

fn other_schema_finding(
    schema: &str,
    per_db: Vec<(String, Result<OtherSchema, String>)>,
    database: Result<Option<bool>, String>,
) -> Finding {
    let mut broken = Vec::new();
    let mut unknown = Vec::new();
    let mut observed = Vec::new();
    for (db, result) in per_db {
        match result {
            Err(e) => unknown.push(format!("in database {db:?}: {e}")),
            Ok(o) if !o.exists => observed.push(format!("no schema {schema:?} in database {db:?}")),
            Ok(o) => {
                if o.usage || o.create {
                    let mut rights = Vec::new();
                    if o.usage {
                        rights.push("USAGE");
                    }
                    if o.create {
                        rights.push("CREATE");
                    }
                    broken.push(format!(
                        "holds {} on schema {schema:?} in database {db:?}",
                        rights.join(" and ")
                    ));
                } else {
                    observed.push(format!(
                        "no USAGE or CREATE on schema {schema:?} in database {db:?}"
                    ));
                }
                match o.read {
                    Some((table, Attempt::Done(()))) => {
                        broken.push(format!("read table {table} in database {db:?}"))
                    }
                    Some((table, Attempt::Denied(m))) => {
                        observed.push(format!("SELECT on {table} denied: {m}"))
                    }
                    Some((table, Attempt::Failed(e))) if !o.usage => {
                        observed.push(format!("SELECT on {table} failed: {e}"))
                    }
                    Some((table, Attempt::Failed(e))) => {
                        unknown.push(format!("SELECT on {table}: {e}"))
                    }
                    None => {}
                }
            }
        }
    }
    match database {
        Ok(Some(true)) => broken.push(format!("may CONNECT to database {schema:?}")),
        Ok(Some(false)) => observed.push(format!("no CONNECT on database {schema:?}")),
        Ok(None) => {}
        Err(e) => unknown.push(format!("database {schema:?}: {e}")),
    }
    if !broken.is_empty() {
        fail(
            check::OTHER_SCHEMA,
            IsolationState::Broken,
            format!(
                "the tenant reaches another tenant's objects: it {}",
                broken.join("; ")
            ),
        )
    } else if !unknown.is_empty() {
        fail(
            check::OTHER_SCHEMA,
            IsolationState::Unknown,
            unknown.join("; "),
        )
    } else {
        pass(check::OTHER_SCHEMA, observed.join("; "))
    }
}

async fn canary_read(conn: &mut PgConnection) -> Finding {
    let sql = format!(
        "SELECT count(*) FROM {}.{}",
        quote_ident(CANARY_SCHEMA),
        quote_ident(CANARY_TABLE)
    );
    match attempt(
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
            .fetch_one(conn)
            .await,
    ) {
        Attempt::Done(rows) => fail(
            check::CANARY_READ,
            IsolationState::Broken,
            format!(
                "the tenant read the operator's canary {CANARY_SCHEMA}.{CANARY_TABLE} ({rows} rows)"
            ),
        ),
        Attempt::Denied(m) => pass(
            check::CANARY_READ,
            format!("SELECT on {CANARY_SCHEMA}.{CANARY_TABLE} denied: {m}"),
        ),
        Attempt::Failed(e) => fail(check::CANARY_READ, IsolationState::Unknown, e),
    }
}

async fn canary_write(conn: &mut PgConnection) -> Finding {
    let sql = format!(
        "INSERT INTO {}.{} (id, secret) VALUES (-1, 'written by the tenantry isolation probe as a tenant')",
        quote_ident(CANARY_SCHEMA),
        quote_ident(CANARY_TABLE)
    );
    match attempt(rolled_back(conn, sql, &[]).await) {
        Attempt::Done(_) => fail(
            check::CANARY_WRITE,
            IsolationState::Broken,
            format!(
                "the tenant inserted into the operator's canary {CANARY_SCHEMA}.{CANARY_TABLE} (rolled back)"
            ),
        ),
        Attempt::Denied(m) => pass(
            check::CANARY_WRITE,
            format!("INSERT into {CANARY_SCHEMA}.{CANARY_TABLE} denied: {m}"),
        ),
        Attempt::Failed(e) => fail(check::CANARY_WRITE, IsolationState::Unknown, e),
    }
}

/// Runs one statement in a transaction that is rolled back whatever
/// happens, and returns the rows it affected.
async fn rolled_back(
    conn: &mut PgConnection,
    sql: String,
    binds: &[&str],
) -> Result<u64, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for value in binds {
        query = query.bind(value.to_string());
    }
    let result = crate::metrics::sql(crate::metrics::Sql::RolledBackDml, query.execute(&mut *tx))
        .await
        .map(|r| r.rows_affected());
    tx.rollback().await?;
    result
}

/// Sets [`SPOOFED_SETTINGS`] for the session; returns the names it could set.
async fn spoof_settings(conn: &mut PgConnection) -> Vec<&'static str> {
    let mut set = Vec::new();
    for (name, value) in SPOOFED_SETTINGS {
        let result = crate::metrics::sql(
            crate::metrics::Sql::Session,
            sqlx::query("SELECT set_config($1, $2, false)")
                .bind(name)
                .bind(value)
                .execute(&mut *conn),
        )
        .await;
        if result.is_ok() {
            set.push(name);
        }
    }
    set
}

async fn table_read(
    conn: &mut PgConnection,
    table: &SharedTable,
    tenant: &str,
    settings: &[&str],
    others_exist: Option<bool>,
) -> Finding {
    let id = check::table(table, check::READ);
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} IS DISTINCT FROM $1 LIMIT {READ_LIMIT}) s",
        qualified(table),
        quote_ident(&table.tenant_column)
    );
    let after = if settings.is_empty() {
        String::new()
    } else {
        format!(" after SET {} to another tenant", settings.join(", "))
    };
    match attempt(count_rows(conn, &sql, tenant).await) {
        Attempt::Done(0) => {}
        Attempt::Done(n) => {
            let at_least = if n >= READ_LIMIT { "at least " } else { "" };
            return fail(
                &id,
                IsolationState::Broken,
                format!("as the tenant{after}, read {at_least}{n} rows of other tenants"),
            );
        }
        Attempt::Denied(m) => return pass(&id, format!("SELECT denied to the tenant: {m}")),
        Attempt::Failed(e) => return fail(&id, IsolationState::Unknown, e),
    }
    // With row_security off a query that policies would filter must fail
    // instead; if it runs, the policies do not apply to the tenant at all.
    let off = match crate::metrics::sql(
        crate::metrics::Sql::Session,
        sqlx::raw_sql("SET row_security = off").execute(&mut *conn),
    )
    .await
    {
        Ok(_) => {
            let result = attempt(count_rows(conn, &sql, tenant).await);
            let _ = crate::metrics::sql(
                crate::metrics::Sql::Session,
                sqlx::raw_sql("RESET row_security").execute(&mut *conn),
            )
            .await;
            result
        }
        Err(e) => Attempt::Failed(describe(&e)),
    };
    let vacuous = match others_exist {
        Some(true) => "",
        Some(false) => " (no other tenant has rows in it yet, so this shows little)",
        None => "",
    };
    match off {
        Attempt::Denied(m) => pass(
            &id,
            format!(
                "no row of another tenant visible{after}{vacuous}; with row_security = off the query is refused: {m}"
            ),
        ),
        Attempt::Done(n) => fail(
            &id,
            IsolationState::Broken,
            format!(
                "with row_security = off the tenant's query ran ({n} rows of other tenants): row-level security does not apply to the tenant"
            ),
        ),
        Attempt::Failed(e) => fail(
            &id,
            IsolationState::Unknown,
            format!("with row_security = off: {e}"),
        ),
    }
}

async fn count_rows(conn: &mut PgConnection, sql: &str, tenant: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string()))
        .bind(tenant.to_string())
        .fetch_one(conn)
        .await
}

async fn table_write(conn: &mut PgConnection, table: &SharedTable, tenant: &str) -> Finding {
    let id = check::table(table, check::WRITE);
    let q = qualified(table);
    let col = quote_ident(&table.tenant_column);
    let attempts: [(&str, String, Vec<&str>, bool); 4] = [
        (
            "INSERT of a row of another tenant",
            format!("INSERT INTO {q} ({col}) VALUES ($1)"),
            vec![CANARY_TENANT],
            true,
        ),
        (
            "UPDATE of another tenant's rows to the tenant",
            format!("UPDATE {q} SET {col} = $1 WHERE {col} = $2"),
            vec![tenant, CANARY_TENANT],
            false,
        ),
        (
            "UPDATE of one of the tenant's rows to another tenant",
            format!(
                "UPDATE {q} SET {col} = $1 WHERE ctid = ANY (ARRAY(SELECT ctid FROM {q} WHERE {col} = $2 LIMIT 1))"
            ),
            vec![CANARY_TENANT, tenant],
            false,
        ),
        (
            "DELETE of another tenant's rows",
            format!("DELETE FROM {q} WHERE {col} = $1"),
            vec![CANARY_TENANT],
            false,
        ),
    ];
    let mut broken = Vec::new();
    let mut unknown = Vec::new();
    let mut observed = Vec::new();
    for (what, sql, binds, must_fail) in attempts {
        match attempt(rolled_back(conn, sql, &binds).await) {
            Attempt::Done(n) if must_fail => {
                broken.push(format!("{what} succeeded ({n} rows, rolled back)"))
            }
            Attempt::Done(0) => observed.push(format!("{what}: 0 rows")),
            Attempt::Done(n) => broken.push(format!("{what} changed {n} rows (rolled back)")),
            Attempt::Denied(m) => observed.push(format!("{what}: refused ({m})")),
            Attempt::Failed(e) => unknown.push(format!("{what}: {e}")),
        }
    }
    if !broken.is_empty() {
        fail(&id, IsolationState::Broken, broken.join("; "))
    } else if !unknown.is_empty() {
        fail(&id, IsolationState::Unknown, unknown.join("; "))
    } else {
        pass(&id, observed.join("; "))
    }
}

fn policy_finding(table: &SharedTable, found: &TableSecurity, role: &str) -> Finding {
    let id = check::table(table, check::POLICY);
    let widening: Vec<String> = found
        .widening_policies(role)
        .iter()
        .map(|p| format!("{:?} ({} TO {})", p.name, p.cmd, p.roles.join(", ")))
        .collect();
    match found.policy(TENANT_POLICY) {
        None => fail(
            &id,
            IsolationState::Broken,
            format!(
                "policy {TENANT_POLICY} is missing: the table is not kept to each tenant's rows (the operator recreates it)"
            ),
        ),
        Some(p) if !shared_tables::is_tenant_policy(p, &table.tenant_column) => fail(
            &id,
            IsolationState::Broken,
            format!(
                "policy {TENANT_POLICY} differs from tenantry's: {} {} TO {} USING {} WITH CHECK {} (expected PERMISSIVE ALL TO public, USING and WITH CHECK {})",
                p.permissive,
                p.cmd,
                p.roles.join(", "),
                p.qual.as_deref().unwrap_or("(none)"),
                p.with_check.as_deref().unwrap_or("(none)"),
                shared_tables::tenant_expression(&table.tenant_column)
            ),
        ),
        Some(_) if !widening.is_empty() => fail(
            &id,
            IsolationState::Inert,
            format!(
                "policy {TENANT_POLICY} is in place, but permissive policies {} also apply to the tenant and are OR-ed with it",
                widening.join(", ")
            ),
        ),
        Some(_) => pass(
            &id,
            format!(
                "policy {TENANT_POLICY}: USING and WITH CHECK {}",
                shared_tables::tenant_expression(&table.tenant_column)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_without_the_rls_fixes_are_named_with_the_release_that_fixes_them() {
        assert!(missing_rls_fixes(150018).is_empty());
        assert!(missing_rls_fixes(170006).is_empty());
        assert!(missing_rls_fixes(180000).is_empty());
        assert_eq!(
            missing_rls_fixes(150008),
            [
                ("CVE-2024-10976", Some("15.9".to_string())),
                ("CVE-2025-8713", Some("15.14".to_string()))
            ]
        );
        assert_eq!(
            missing_rls_fixes(150002),
            [
                ("CVE-2023-2455", Some("15.3".to_string())),
                ("CVE-2024-10976", Some("15.9".to_string())),
                ("CVE-2025-8713", Some("15.14".to_string()))
            ]
        );
        assert_eq!(
            missing_rls_fixes(170000)
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>(),
            ["CVE-2024-10976", "CVE-2025-8713"]
        );
        assert_eq!(
            missing_rls_fixes(160005),
            [("CVE-2025-8713", Some("16.10".to_string()))]
        );
        // Majors past their end of life never got some of the fixes.
        assert_eq!(
            missing_rls_fixes(110022),
            [("CVE-2024-10976", None), ("CVE-2025-8713", None)]
        );
        assert_eq!(missing_rls_fixes(90624).len(), 3);
        let f = version_finding("15.8", 150008);
        assert_eq!(f.state, IsolationState::Inert);
        assert!(
            f.detail.contains("CVE-2024-10976 (fixed in 15.9)"),
            "{}",
            f.detail
        );
        assert_eq!(
            version_finding("15.18", 150018).state,
            IsolationState::Enforced
        );
    }

    #[test]
    fn a_privileged_role_is_broken_with_the_statement_a_superuser_must_run() {
        let facts = RoleFacts {
            rolbypassrls: true,
            rolcanlogin: true,
            ..RoleFacts::default()
        };
        let findings = role_findings("t_x", Some(&facts));
        let bypass = findings
            .iter()
            .find(|f| f.check == check::BYPASSRLS)
            .unwrap();
        assert_eq!(bypass.state, IsolationState::Broken);
        assert!(
            bypass
                .detail
                .contains("a superuser must run: ALTER ROLE \"t_x\" NOBYPASSRLS;"),
            "{}",
            bypass.detail
        );
        let both = RoleFacts {
            rolsuper: true,
            ..facts.clone()
        };
        let findings = role_findings("t_x", Some(&both));
        for id in [check::SUPERUSER, check::BYPASSRLS] {
            let f = findings.iter().find(|f| f.check == id).unwrap();
            assert!(
                f.detail
                    .contains("ALTER ROLE \"t_x\" NOSUPERUSER NOBYPASSRLS;"),
                "{}",
                f.detail
            );
        }
        let clean = role_findings(
            "t_x",
            Some(&RoleFacts {
                rolcanlogin: true,
                ..RoleFacts::default()
            }),
        );
        assert!(clean.iter().all(|f| f.state == IsolationState::Enforced));
        let member = RoleFacts {
            member_of: vec!["t_y".into()],
            ..RoleFacts::default()
        };
        let f = role_findings("t_x", Some(&member)).pop().unwrap();
        assert_eq!(
            (f.check.as_str(), f.state),
            (check::MEMBERSHIPS, IsolationState::Broken)
        );
        assert!(
            f.detail.contains("REVOKE \"t_y\" FROM \"t_x\""),
            "{}",
            f.detail
        );
        assert!(
            role_findings("t_x", None)
                .iter()
                .all(|f| f.state == IsolationState::Unknown)
        );
    }

    #[test]
    fn reaching_another_tenants_schema_is_broken_and_not_reaching_it_passes() {
        let denied = OtherSchema {
            exists: true,
            usage: false,
            create: false,
            read: Some((
                "\"t_b\".\"x\"".into(),
                Attempt::Denied("permission denied for schema t_b".into()),
            )),
        };
        let f = other_schema_finding("t_b", vec![("db".into(), Ok(denied))], Ok(None));
        assert_eq!(f.state, IsolationState::Enforced, "{}", f.detail);
        let reached = OtherSchema {
            exists: true,
            usage: true,
            create: false,
            read: Some(("\"t_b\".\"x\"".into(), Attempt::Done(()))),
        };
        let f = other_schema_finding("t_b", vec![("db".into(), Ok(reached))], Ok(None));
        assert_eq!(f.state, IsolationState::Broken);
        assert!(
            f.detail.contains("USAGE") && f.detail.contains("read table"),
            "{}",
            f.detail
        );
        let absent = OtherSchema {
            exists: false,
            usage: false,
            create: false,
            read: None,
        };
        let f = other_schema_finding("t_b", vec![("db".into(), Ok(absent))], Ok(Some(true)));
        assert_eq!(f.state, IsolationState::Broken, "{}", f.detail);
    }

    #[test]
    fn create_in_public_anywhere_the_tenant_logs_in_is_broken() {
        let f = public_create_finding(
            "t_a",
            vec![
                ("t_a".into(), Ok(Some(false))),
                ("shared".into(), Ok(Some(true))),
            ],
        );
        assert_eq!(f.state, IsolationState::Broken);
        assert!(f.detail.contains("shared"), "{}", f.detail);
        let f = public_create_finding("t_a", vec![("t_a".into(), Ok(None))]);
        assert_eq!(f.state, IsolationState::Enforced);
    }
}
