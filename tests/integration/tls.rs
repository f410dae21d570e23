//! Encryption in transit to PostgreSQL, against the local environment's real
//! servers, which present a certificate for 127.0.0.1/localhost signed by
//! the environment's PostgreSQL CA (`TENANTRY_PG_CA_FILE`). The API server's
//! CA (`TENANTRY_KUBE_CA_FILE`) plays the wrong CA: a real CA that did not
//! sign the server's certificate. A relay on 127.0.0.2 reaches the same
//! server under a name its certificate does not hold, and a relay that
//! answers "no TLS" for the server plays the network attacker who tries a
//! downgrade (the servers accept plaintext on loopback, so a client that
//! gave in would get through: the refusal is the client's own).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{ConnectOptions, Connection};
use tenantry::api::{IsolationMode, SslMode, TenantClass};
use tenantry::backends::pg_tls::{CaSource, DatabaseTls};
use tenantry::backends::postgres::PostgresBackend;
use tenantry::backends::{BackendError, DatabaseCredentials, TenantDatabase, TenantRef};
use tenantry::naming::TenantNames;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::cluster::*;
use crate::support::{env, unique_name, unrecorded};

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

const SSL_OF_SESSION: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// `url` without its TLS parameters, so only what a test sets applies.
fn without_tls(url: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a URL");
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    parsed.to_string()
}

/// `url` pointed at another address (a relay).
fn via(url: &str, addr: SocketAddr) -> String {
    let mut parsed = url::Url::parse(url).expect("a URL");
    parsed.set_ip_host(addr.ip()).unwrap();
    parsed.set_port(Some(addr.port())).unwrap();
    parsed.to_string()
}

fn server_addr(url: &str) -> SocketAddr {
    let parsed = url::Url::parse(url).expect("a URL");
    format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    )
    .parse()
    .expect("the local servers listen on an IP address")
}

fn pg_ca() -> String {
    env("TENANTRY_PG_CA_FILE")
}

/// A real CA that did not sign the PostgreSQL server's certificate.
fn wrong_ca() -> String {
    env("TENANTRY_KUBE_CA_FILE")
}

fn tls(mode: SslMode, ca_file: &str) -> DatabaseTls {
    DatabaseTls {
        ssl_mode: Some(mode),
        ca: Some(CaSource::File(ca_file.into())),
        ..Default::default()
    }
}

async fn connect(url: &str, tls: &DatabaseTls) -> Result<PostgresBackend, BackendError> {
    PostgresBackend::connect_with_tls(&SecretString::from(url.to_string()), 2, None, None, tls)
        .await
}

async fn session_is_encrypted(conn: &mut PgConnection) -> bool {
    sqlx::query_scalar(SSL_OF_SESSION)
        .fetch_one(conn)
        .await
        .expect("read pg_stat_ssl")
}

/// A TCP relay to `target` listening on `ip`, for as long as it lives. With
/// `refuse_tls`, it answers a client's SSLRequest with "N" itself (as an
/// attacker between client and server would) and relays the rest in
/// plaintext.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(ip: &str, target: SocketAddr, refuse_tls: bool) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay_one(client, target, refuse_tls));
            }
        });
        Self { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_one(mut client: TcpStream, target: SocketAddr, refuse_tls: bool) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    if refuse_tls {
        let mut first = [0u8; 8];
        if client.read_exact(&mut first).await.is_err() {
            return;
        }
        if first == SSL_REQUEST {
            if client.write_all(b"N").await.is_err() {
                return;
            }
        } else if server.write_all(&first).await.is_err() {
            return;
        }
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

fn rejected_message(err: &BackendError) -> &str {
    match err {
        BackendError::Rejected { message, .. } => message,
        other => panic!("expected a permanent (Rejected) error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_admin_connection_is_encrypted_and_checked_against_the_ca() {
    let url = env("TENANTRY_DATABASE_URL");
    let ca = std::fs::read_to_string(pg_ca()).unwrap();

    // As the environment's URL says: verify-full with its sslrootcert.
    let backend = connect(&url, &DatabaseTls::default()).await.unwrap();
    assert!(matches!(backend.tls().mode, PgSslMode::VerifyFull));
    assert_eq!(backend.tls().mode_name(), "verify-full");
    assert_eq!(backend.tls().ca.as_ref().unwrap().pem(), ca);
    let ssl: bool = sqlx::query_scalar(SSL_OF_SESSION)
        .fetch_one(backend.pool())
        .await
        .unwrap();
    assert!(ssl, "the admin pool's session is not encrypted");

    // As the flags say, over a URL that says nothing about TLS.
    let bare = without_tls(&url);
    let backend = connect(&bare, &tls(SslMode::VerifyFull, &pg_ca()))
        .await
        .unwrap();
    assert_eq!(backend.tls().mode_name(), "verify-full");
    let ssl: bool = sqlx::query_scalar(SSL_OF_SESSION)
        .fetch_one(backend.pool())
        .await
        .unwrap();
    assert!(ssl, "the admin pool's session is not encrypted");
    backend.pool().close().await;
}

#[tokio::test]
async fn verify_full_with_a_ca_that_did_not_sign_the_server_fails_for_good() {
    let url = env("TENANTRY_DATABASE_URL");
    let addr = server_addr(&url);
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let err = connect(&url, &tls(mode, &wrong_ca())).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        let message = rejected_message(&err);
        assert!(message.contains("unknown issuer"), "{message}");
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains(&format!("sslmode={mode}")), "{message}");
    }
}

#[tokio::test]
async fn verify_full_with_a_host_name_the_certificate_does_not_hold_fails_for_good() {
    let url = env("TENANTRY_DATABASE_URL");
    // The same server, reached as 127.0.0.2: the certificate names only
    // 127.0.0.1 and localhost.
    let relay = Relay::start("127.0.0.2", server_addr(&url), false).await;
    let other_name = via(&url, relay.addr);
    let err = connect(&other_name, &tls(SslMode::VerifyFull, &pg_ca()))
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let message = rejected_message(&err);
    assert!(
        message.contains("does not name the host") && message.contains("127.0.0.2"),
        "{message}"
    );
    // verify-ca checks the CA only: the same relay passes, so the refusal
    // above was the name's doing.
    let backend = connect(&other_name, &tls(SslMode::VerifyCa, &pg_ca()))
        .await
        .unwrap();
    backend.pool().close().await;
}

#[tokio::test]
async fn a_server_that_answers_no_tls_is_refused_and_never_used_in_plaintext() {
    let url = env("TENANTRY_DATABASE_URL");
    let relay = Relay::start("127.0.0.1", server_addr(&url), true).await;
    let downgraded = via(&url, relay.addr);

    // What the attack gets from the driver's default (prefer): a plaintext
    // session. This is why the operator's default matters.
    let prefer: PgConnectOptions = without_tls(&downgraded).parse().unwrap();
    let mut conn = PgConnection::connect_with(&prefer.ssl_mode(PgSslMode::Prefer))
        .await
        .expect("prefer gives in to the downgrade");
    assert!(!session_is_encrypted(&mut conn).await);
    conn.close().await.unwrap();

    for mode in [SslMode::VerifyFull, SslMode::Require] {
        let tls = match mode {
            SslMode::Require => DatabaseTls {
                ssl_mode: Some(mode),
                ..Default::default()
            },
            _ => tls(mode, &pg_ca()),
        };
        let err = connect(&without_tls(&downgraded), &tls).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        let message = rejected_message(&err);
        assert!(
            message.contains("did not accept TLS") && message.contains("never falls back"),
            "{message}"
        );
    }
}

/// A tenant provisioned by the real backend, and its credentials as the
/// Secrets Manager step would store them.
async fn provision(backend: &PostgresBackend) -> (TenantRef, TenantNames, DatabaseCredentials) {
    let t = crate::isolation_db::provision(backend, "tls", IsolationMode::Schema, &[]).await;
    (t.tenant, t.names, t.credentials)
}

/// Runs psql from the environment's PostgreSQL with `conninfo`, the
/// password in PGPASSWORD (never on a command line) and no CA from the
/// environment. Returns its stdout, or its stderr as the error.
async fn psql(conninfo: &str, password: &SecretString, sql: &str) -> Result<String, String> {
    let out = tokio::process::Command::new(format!("{}/psql", env("TENANTRY_PG_BIN")))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, conninfo])
        .env("PGPASSWORD", password.expose_secret())
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGSSLMODE")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test]
async fn a_tenants_url_asks_for_verify_full_and_logs_in_encrypted() {
    let backend = connect(&env("TENANTRY_DATABASE_URL"), &DatabaseTls::default())
        .await
        .unwrap();
    let (tenant, names, creds) = provision(&backend).await;
    let url = creds.url(backend.tls().mode_name());
    let parsed = url::Url::parse(url.expose_secret()).unwrap();
    let sslmode: Vec<String> = parsed
        .query_pairs()
        .filter(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(sslmode, ["verify-full"]);

    // sqlx, as an application would use it, with the CA the Secret's
    // ca.crt holds.
    let options: PgConnectOptions = url.expose_secret().parse().unwrap();
    let mut conn = PgConnection::connect_with(&options.ssl_root_cert(pg_ca()))
        .await
        .map_err(|e| e.to_string())
        .expect("the tenant logs in with its URL");
    assert!(session_is_encrypted(&mut conn).await);
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(user, creds.username);
    conn.close().await.unwrap();

    // libpq (psql), given the URL without its password and sslrootcert
    // pointing at the CA, as the docs tell applications to do.
    let mut no_password = parsed.clone();
    no_password.set_password(None).unwrap();
    let with_ca = |ca: &str| {
        let mut u = no_password.clone();
        u.query_pairs_mut().append_pair("sslrootcert", ca);
        u.to_string()
    };
    let ssl = psql(&with_ca(&pg_ca()), &creds.password, SSL_OF_SESSION)
        .await
        .expect("psql logs in with the tenant's URL");
    assert_eq!(ssl, "t");
    // The same URL with the wrong CA is refused by libpq too.
    let err = psql(&with_ca(&wrong_ca()), &creds.password, SSL_OF_SESSION)
        .await
        .unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    // And a downgrade of the tenant's connection is refused.
    let relay = Relay::start(
        "127.0.0.1",
        server_addr(&env("TENANTRY_DATABASE_URL")),
        true,
    )
    .await;
    let downgraded: PgConnectOptions = via(url.expose_secret(), relay.addr).parse().unwrap();
    let err = PgConnection::connect_with(&downgraded.ssl_root_cert(pg_ca()))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string().contains("server does not support TLS"),
        "{err}"
    );

    backend
        .remove_tenant(&unrecorded(&tenant), &names, IsolationMode::Schema)
        .await
        .unwrap();
    backend.pool().close().await;
}

/// Runs `tenantry run` until it exits (it must, on these settings), with
/// the admin kubeconfig and no CA from the environment. Returns the exit
/// code and stderr.
async fn run_operator(envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let client = kube_client().await;
    install_crd(&client).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.arg("run")
        .env("TENANTRY_METRICS_ADDR", "127.0.0.1:0")
        .env("TENANTRY_TENANT_SELECTOR", "tenantry.dev/test-run=none")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGSSLMODE")
        .env_remove("TENANTRY_DATABASE_CA_FILE")
        .env_remove("TENANTRY_DATABASE_SSL_MODE")
        .env_remove("FAILPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("tenantry run exits by itself on a TLS failure")
        .expect("run tenantry");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn password_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .password()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn tenantry_run_refuses_to_start_when_the_server_fails_verification() {
    let url = env("TENANTRY_DATABASE_URL");
    let password = password_of(&url);
    let addr = server_addr(&url);
    let bare = without_tls(&url);

    // The CA did not sign the server's certificate.
    let wrong = wrong_ca();
    let (code, stderr) = run_operator(&[
        ("TENANTRY_DATABASE_URL", &bare),
        ("TENANTRY_DATABASE_SSL_MODE", "verify-full"),
        ("TENANTRY_DATABASE_CA_FILE", &wrong),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("certificate verification failed") && stderr.contains("unknown issuer"),
        "{stderr}"
    );
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
    assert!(
        !stderr.contains(&password),
        "stderr shows the admin password"
    );

    // The URL's host is not a name the certificate holds.
    let relay = Relay::start("127.0.0.2", addr, false).await;
    let other_name = via(&url, relay.addr);
    let (code, stderr) = run_operator(&[("TENANTRY_DATABASE_URL", &other_name)]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("certificate verification failed")
            && stderr.contains("does not name the host")
            && stderr.contains("127.0.0.2"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&password),
        "stderr shows the admin password"
    );

    // Bad settings are refused before any connection, each with its cause.
    let dir = std::env::temp_dir().join(unique_name("tls-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-a-bundle.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.to_string_lossy().into_owned();
    let ca = pg_ca();
    for (envs, expected) in [
        (
            vec![
                ("TENANTRY_DATABASE_URL", bare.as_str()),
                ("TENANTRY_DATABASE_SSL_MODE", "verify-full"),
                ("TENANTRY_DATABASE_CA_FILE", not_pem.as_str()),
            ],
            "holds no PEM certificate",
        ),
        (
            vec![
                ("TENANTRY_DATABASE_URL", bare.as_str()),
                ("TENANTRY_DATABASE_SSL_MODE", "require"),
                ("TENANTRY_DATABASE_CA_FILE", ca.as_str()),
            ],
            "does not check the server's certificate",
        ),
        (
            vec![
                ("TENANTRY_DATABASE_URL", bare.as_str()),
                ("TENANTRY_DATABASE_CA_FILE", "/nonexistent/ca.pem"),
                ("TENANTRY_DATABASE_SSL_MODE", "verify-full"),
            ],
            "cannot read the CA bundle --database-ca-file /nonexistent/ca.pem",
        ),
    ] {
        let (code, stderr) = run_operator(&envs).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    let (code, stderr) = run_operator(&[
        ("TENANTRY_DATABASE_URL", &bare),
        ("TENANTRY_DATABASE_SSL_MODE", "sometimes"),
    ])
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("verify-full"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn put_secret(client: &kube::Client, namespace: &str, name: &str, key: &str, value: &[u8]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some([(key.to_string(), ByteString(value.to_vec()))].into()),
        ..Default::default()
    };
    match secrets.get_opt(name).await.expect("read Secret") {
        None => {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .expect("create Secret");
        }
        Some(_) => {
            secrets
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {key: ByteString(value.to_vec())}})),
                )
                .await
                .expect("update Secret");
        }
    }
}

#[tokio::test]
async fn a_class_with_its_own_ca_verifies_its_server_and_hands_the_ca_to_its_tenants() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = create_namespace(&client, "tls").await;
    let op = Operator::start(&[]).await;

    // The second server, with a URL that says nothing about TLS: the class
    // says verify-full and names its CA, at first the wrong one.
    let url_secret = unique_name("pg2-url");
    let bare = without_tls(&env("TENANTRY_DATABASE_URL_2"));
    put_secret(&client, &ns, &url_secret, "url", bare.as_bytes()).await;
    let ca_secret = unique_name("pg2-ca");
    let wrong = std::fs::read(wrong_ca()).unwrap();
    put_secret(&client, &ns, &ca_secret, "ca.crt", &wrong).await;
    let class = unique_name("tls");
    let classes: Api<TenantClass> = Api::all(client.clone());
    let manifest: TenantClass = serde_json::from_value(json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "TenantClass",
        "metadata": {"name": class},
        "spec": {"postgres": {
            "adminUrlSecretRef": {"namespace": ns, "name": url_secret},
            "sslMode": "verify-full",
            "caSecretRef": {"namespace": ns, "name": ca_secret},
        },
        "deletion": {"policy": "Delete", "gracePeriod": "1s"}},
    }))
    .unwrap();
    classes
        .create(&PostParams::default(), &manifest)
        .await
        .expect("create TenantClass");

    let name = unique_name("tls");
    create_tenant(
        &client,
        &tenant_manifest(
            &op,
            &name,
            json!({"class": class, "credentials": {"namespace": ns}}),
        ),
    )
    .await;
    let failed = wait_for_tenant(
        &client,
        &op,
        &name,
        Duration::from_secs(60),
        "refused for its class's CA",
        |t| condition(t, "Ready").is_some_and(|c| c.reason == "ClassUnavailable"),
    )
    .await;
    let message = condition(&failed, "Ready").unwrap().message.clone();
    assert!(
        message.contains("certificate verification failed") && message.contains("unknown issuer"),
        "{message}"
    );
    assert!(
        !message.contains(&password_of(&bare)),
        "the condition shows the password"
    );

    // The right CA in the class's Secret, and the tenant asks again (a spec
    // change; a failed tenant otherwise waits for its backoff).
    let right = std::fs::read_to_string(pg_ca()).unwrap();
    put_secret(&client, &ns, &ca_secret, "ca.crt", right.as_bytes()).await;
    let tenants: Api<tenantry::api::Tenant> = Api::all(client.clone());
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"displayName": "CA fixed"}})),
        )
        .await
        .unwrap();
    wait_for_tenant(
        &client,
        &op,
        &name,
        Duration::from_secs(90),
        "Ready",
        is_ready,
    )
    .await;

    // The credentials carry the class's mode and CA, and work as they are.
    let data =
        crate::support::readback::kube_secret_data(&client, &ns, &format!("{name}-credentials"))
            .await;
    assert_eq!(data["ca.crt"], right);
    let url = url::Url::parse(&data["url"]).unwrap();
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "sslmode" && v == "verify-full"),
        "the tenant's URL does not ask for verify-full"
    );
    let options: PgConnectOptions = data["url"].parse().unwrap();
    let mut conn = options
        .ssl_root_cert_from_pem(data["ca.crt"].as_bytes().to_vec())
        .connect()
        .await
        .map_err(|e| e.to_string())
        .expect("the tenant logs in with its Secret's url and ca.crt");
    assert!(session_is_encrypted(&mut conn).await);
    conn.close().await.unwrap();

    tenants.delete(&name, &Default::default()).await.unwrap();
    wait_for_tenant_gone(&client, &op, &name, Duration::from_secs(60)).await;
    classes.delete(&class, &Default::default()).await.unwrap();
}
