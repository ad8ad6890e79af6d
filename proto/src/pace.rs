//! A token bucket over results: what paces an agent's uploads and the collector's reading of
//! one agent's stream. On tokio's clock, so tests can pause time.

use std::time::Duration;

use tokio::time::Instant;

/// `rate` tokens a second, holding at most `burst`; it starts full.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` a second (at least 1) holding at most `burst` (at least 1).
    pub fn new(rate: u32, burst: f64) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket { rate: f64::from(rate.max(1)), burst, tokens: burst, at: Instant::now() }
    }

    /// A bucket like [`TokenBucket::new`] that starts empty: its rate holds from now.
    pub fn empty(rate: u32, burst: f64) -> TokenBucket {
        let mut b = TokenBucket::new(rate, burst);
        b.tokens = 0.0;
        b
    }

    /// The most it holds.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Changes the rate (at least 1) and the most it holds (at least 1), keeping the tokens
    /// it has up to the new most.
    pub fn set_rate(&mut self, rate: u32, burst: f64) {
        self.available();
        self.rate = f64::from(rate.max(1));
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    /// Whole tokens available now.
    pub fn available(&mut self) -> usize {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        self.tokens.max(0.0) as usize
    }

    /// Takes `n` tokens, going into debt if there are fewer.
    pub fn spend(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// Takes `n` tokens, waiting until the bucket has refilled any debt that leaves.
    pub async fn take(&mut self, n: usize) {
        self.available();
        self.spend(n);
        if self.tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.rate)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_empty_bucket_fills_at_its_rate() {
        let mut b = TokenBucket::empty(8, 100.0);
        assert_eq!(b.available(), 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn take_waits_out_the_debt() {
        let mut b = TokenBucket::new(100, 100.0);
        let t = Instant::now();
        b.take(100).await;
        assert_eq!(t.elapsed(), Duration::ZERO, "the first burst is free");
        b.take(50).await;
        assert_eq!(t.elapsed(), Duration::from_millis(500));
    }
}
