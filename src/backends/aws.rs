//! What the AWS backends share: the SDK configuration and one classifier that
//! turns SDK errors into [`BackendError`]s, so every service agrees on what is
//! worth retrying.

use std::collections::BTreeMap;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::{Backend, BackendError, TenantRef, tags};

/// Loads the SDK configuration from the standard chain: environment
/// (`AWS_REGION`, `AWS_ENDPOINT_URL`, keys), profile files, web identity
/// (IRSA), container and instance metadata.
///
/// Every call has a deadline: a request whose answer never comes (a dropped
/// connection, a hung endpoint) fails as a timeout, which is transient and
/// retried, instead of holding a reconcile forever.
pub async fn load_sdk_config() -> SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .operation_attempt_timeout(std::time::Duration::from_secs(30))
        .operation_timeout(std::time::Duration::from_secs(120))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await
}

/// The error every SDK operation returns.
pub(crate) type AwsError<E> = SdkError<E, HttpResponse>;

/// Error codes that mean "try again later" on any of the three services.
/// `LimitExceededException` is a quota (e.g. too many KMS requests or keys
/// being created), which clears by itself.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "SlowDown",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "KMSInternalException",
    "LimitExceededException",
];

/// Whether a service error is worth retrying, from its HTTP status and code.
pub(crate) fn is_transient(status: Option<u16>, code: Option<&str>) -> bool {
    status.is_some_and(|s| s >= 500 || s == 429)
        || code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
}

/// The service's error code, when the service answered with one.
pub(crate) fn error_code<E: ProvideErrorMetadata>(err: &AwsError<E>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// The HTTP status of the answer, when there was one.
pub(crate) fn http_status<E>(err: &AwsError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Turns an SDK error into a [`BackendError`]. `context` names the call and
/// the resource ("CreateBucket tenantry-acme"); it must never hold a secret
/// value, and neither do AWS error messages.
pub(crate) fn classify<E>(backend: Backend, context: &str, err: AwsError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        // A user error (a malformed request) will fail the same way again.
        SdkError::DispatchFailure(e) => !e.is_user(),
        SdkError::ConstructionFailure(_) => false,
        SdkError::ServiceError(_) => is_transient(http_status(&err), error_code(&err)),
        _ => false,
    };
    let message = match &err {
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or("UnknownError");
            let status = e.raw().status().as_u16();
            match e.err().message() {
                Some(m) if !m.is_empty() => format!("{context}: {code} (HTTP {status}): {m}"),
                _ => format!("{context}: {code} (HTTP {status})"),
            }
        }
        _ => format!("{context}: {}", DisplayErrorContext(&err)),
    };
    if transient {
        BackendError::Unavailable { backend, message }
    } else {
        BackendError::Rejected { backend, message }
    }
}

/// A request that could not even be built: a bug, never worth retrying.
pub(crate) fn build_error(
    backend: Backend,
    err: aws_smithy_types::error::operation::BuildError,
) -> BackendError {
    BackendError::Rejected {
        backend,
        message: format!("could not build the request: {err}"),
    }
}

/// The tags tenantry wants on every resource of `tenant`.
pub(crate) fn desired_tags(tenant: &TenantRef) -> BTreeMap<String, String> {
    let mut tags = tenant.ownership_tags();
    if let Some(display) = tenant.display_name.as_deref().map(tag_value)
        && !display.is_empty()
    {
        tags.insert(DISPLAY_NAME_TAG.to_string(), display);
    }
    tags
}

/// `text` as an AWS tag value: S3, KMS and Secrets Manager accept letters,
/// digits, spaces and `_ . : / = + - @`, up to 256 characters, and refuse
/// the whole request otherwise. A display name is free text ("O'Brien,
/// Ltd."), so every other character becomes a space, runs of spaces
/// collapse, and the result is cut to 256 characters.
pub(crate) fn tag_value(text: &str) -> String {
    let allowed = |c: char| c.is_alphanumeric() || " _.:/=+-@".contains(c);
    let mapped: String = text
        .chars()
        .map(|c| if allowed(c) { c } else { ' ' })
        .collect();
    mapped
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(256)
        .collect()
}

/// The tenant's display name, for people browsing the AWS console.
pub(crate) const DISPLAY_NAME_TAG: &str = "tenantry.dev/display-name";

/// What to change on a resource's tags so it carries `desired`: the tags to
/// set (new or different values), and whether the released mark must go.
/// Tags tenantry does not manage (a user's cost-centre tag) stay.
pub(crate) fn tag_changes(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, bool) {
    let set = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (set, current.contains_key(tags::RELEASED))
}

/// Borrows a tag map in the shape [`TenantRef::ownership_of`] takes.
pub(crate) fn tag_pairs(tags: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// The conflict error for a resource that is not the tenant's.
pub(crate) fn conflict(
    backend: Backend,
    resource: impl Into<String>,
    detail: impl Into<String>,
) -> BackendError {
    BackendError::Conflict {
        backend,
        resource: resource.into(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_quota_and_server_errors_are_retried() {
        for code in [
            "Throttling",
            "ThrottlingException",
            "SlowDown",
            "RequestLimitExceeded",
            "TooManyRequestsException",
            "ServiceUnavailable",
            "InternalError",
            "InternalFailure",
            "RequestTimeout",
            "KMSInternalException",
            "LimitExceededException",
        ] {
            assert!(is_transient(Some(400), Some(code)), "{code}");
        }
        assert!(is_transient(Some(500), None));
        assert!(is_transient(Some(503), Some("Whatever")));
        assert!(is_transient(Some(429), None));
    }

    #[test]
    fn refusals_are_not_retried() {
        for code in [
            "AccessDenied",
            "AccessDeniedException",
            "InvalidBucketName",
            "NotFoundException",
            "ValidationException",
            "MalformedPolicyDocumentException",
        ] {
            assert!(!is_transient(Some(400), Some(code)), "{code}");
        }
        assert!(!is_transient(Some(403), None));
        assert!(!is_transient(None, None));
    }

    #[test]
    fn display_names_become_tag_values_aws_accepts() {
        assert_eq!(tag_value("O'Brien, Ltd."), "O Brien Ltd.");
        assert_eq!(tag_value("Acme Corp"), "Acme Corp");
        assert_eq!(tag_value("Zürich AG & Söhne"), "Zürich AG Söhne");
        assert_eq!(tag_value("\"'<>,;"), "");
        assert_eq!(tag_value(&"x".repeat(300)).chars().count(), 256);
    }

    #[test]
    fn tag_changes_add_ours_keep_others_and_drop_the_released_mark() {
        let tenant = TenantRef {
            name: "acme".into(),
            uid: "new".into(),
            display_name: Some("Acme".into()),
        };
        let desired = desired_tags(&tenant);
        let current: BTreeMap<String, String> = [
            (tags::TENANT, "acme"),
            (tags::TENANT_UID, "old"),
            (tags::RELEASED, "true"),
            (tags::MANAGED_BY, tags::MANAGED_BY_VALUE),
            ("cost-centre", "42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (set, drop_released) = tag_changes(&current, &desired);
        assert!(drop_released);
        assert_eq!(
            set,
            BTreeMap::from([
                (tags::TENANT_UID.to_string(), "new".to_string()),
                (DISPLAY_NAME_TAG.to_string(), "Acme".to_string()),
            ])
        );

        let converged: BTreeMap<String, String> = desired.clone();
        assert_eq!(tag_changes(&converged, &desired), (BTreeMap::new(), false));
    }
}

/// Counts every SDK operation a client runs (one per operation, however
/// many HTTP attempts the SDK's own retries make) into
/// `tenantry_backend_calls_total`, with the operation name from the SDK's
/// metadata, and times it.
#[derive(Debug)]
struct CallCounter {
    backend: &'static str,
}

#[derive(Debug, Clone)]
struct CallStart(std::time::Instant);

impl aws_smithy_types::config_bag::Storable for CallStart {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "tenantry::CallCounter"
    }

    fn read_before_execution(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state()
            .store_put(CallStart(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map_or("unknown", |m| intern(m.name()));
        let elapsed = cfg
            .load::<CallStart>()
            .map(|s| s.0.elapsed())
            .unwrap_or_default();
        let ok = matches!(context.output_or_error(), Some(Ok(_)));
        crate::metrics::record_call(
            self.backend,
            operation,
            crate::metrics::aws_operation_kind(operation),
            ok,
            elapsed,
        );
        Ok(())
    }
}

/// A `'static` copy of an SDK operation name, for a metric label. The names
/// are those of the operations the code calls: a small, fixed set.
fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(found) = names.get(name) {
        return found;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A KMS client whose calls are counted.
pub(crate) fn kms_client(sdk: &SdkConfig) -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::config::Builder::from(sdk)
        .interceptor(CallCounter { backend: "kms" })
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

/// A Secrets Manager client whose calls are counted.
pub(crate) fn secrets_client(sdk: &SdkConfig) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::config::Builder::from(sdk)
        .interceptor(CallCounter {
            backend: "secretsmanager",
        })
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

/// The counting interceptor for an S3 client's configuration.
pub(crate) fn count_s3_calls(builder: aws_sdk_s3::config::Builder) -> aws_sdk_s3::config::Builder {
    builder.interceptor(CallCounter { backend: "s3" })
}
