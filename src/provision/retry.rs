//! How the engine retries a transient failure: capped, jittered exponential
//! backoff, a fixed number of tries, then the error is treated as permanent.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::StepError;

/// Capped exponential backoff with full jitter for transient errors.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The longest delay before try number `retry` (1-based), before jitter.
    pub fn delay_cap(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Runs `op` until it succeeds, fails permanently, or the tries run out.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StepError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let mut tried = 0;
        loop {
            tried += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => self.after_failure(tried, e).await?,
            }
        }
    }

    /// After failed try number `tried`: sleeps and returns `Ok` when another
    /// try is due, or returns the error to give up with.
    pub async fn after_failure(&self, tried: u32, mut error: StepError) -> Result<(), StepError> {
        if error.transient && tried < self.attempts {
            let cap = self.delay_cap(tried);
            let delay = rand::rng().random_range(Duration::ZERO..=cap);
            tracing::debug!(try_number = tried, ?delay, %error, "transient error; retrying");
            tokio::time::sleep(delay).await;
            return Ok(());
        }
        if error.transient {
            error.message = format!("{} (gave up after {tried} tries)", error.message);
        }
        Err(error)
    }
}
