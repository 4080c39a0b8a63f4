//! `POST /login` per client address: a GCRA token bucket (`governor`) per address, so one
//! address cannot flood the session service with logins or new accounts.
//!
//! - The address is the TCP peer's, from axum's `ConnectInfo` (the gateway serves with
//!   `into_make_service_with_connect_info`). `X-Forwarded-For` and friends are *not*
//!   read: anyone can write them, so trusting them by default would let every request
//!   pick its own bucket.
//! - IPv6 clients are limited per /64 (what one host or subscriber is usually given, so
//!   cycling through its own addresses does not help); IPv4-mapped IPv6 counts as IPv4.
//! - An address over its rate gets `429` with `Retry-After` (whole seconds, at least 1)
//!   and the usual `{"error"}` body; the request goes no further.
//! - Addresses whose bucket has refilled are forgotten every [`UPKEEP_INTERVAL`], so the
//!   table holds only clients seen within roughly `burst / per_second`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// How often addresses whose bucket is full again are dropped from the table.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(30);

/// `[gateway.login_rate]`: logins per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginRate {
    /// Sustained logins per second from one address (the bucket's refill rate).
    pub per_second: u32,
    /// Logins one address may make at once before the rate applies (the bucket's size).
    pub burst: u32,
}

impl Default for LoginRate {
    /// 1,000 at once, then 20 a second: a load harness on one machine starts 1,000
    /// players at 500/s without a single 429; a script creating accounts in a loop is
    /// held to 20 a second (1.7 million a day) after its first thousand, and the
    /// session service's `max_accounts` bounds the table whatever the number of addresses.
    fn default() -> Self {
        Self { per_second: 20, burst: 1000 }
    }
}

impl LoginRate {
    /// Both numbers at least 1; the message names the key.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        for (key, value) in [("per_second", self.per_second), ("burst", self.burst)] {
            if value == 0 {
                return Err(format!("config key `{section}.login_rate.{key}` must be at least 1"));
            }
        }
        Ok(())
    }
}

/// One token bucket per client address.
pub struct LoginLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl LoginLimiter {
    pub fn new(rate: LoginRate) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN));
        Self { limiter: RateLimiter::keyed(quota), clock: DefaultClock::default() }
    }

    /// Takes one login from `client`'s bucket, or says how long until one is there.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client_key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets addresses whose bucket is full again (they would start afresh anyway).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Addresses in the table.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// The bucket an address draws from: IPv4 as is, IPv6 by its /64.
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
    }
}

/// Drops forgotten addresses every [`UPKEEP_INTERVAL`] until shutdown.
pub fn spawn_upkeep(limiter: Arc<LoginLimiter>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(UPKEEP_INTERVAL) => limiter.forget_idle(),
                () = shutdown.cancelled() => return,
            }
            metrics::gauge!("mm_gateway_login_rate_clients").set(limiter.clients() as f64);
        }
    });
}

/// Middleware on `POST /login`: over its rate, the address gets a 429 before its body is
/// even read.
pub async fn limit_login(State(limiter): State<Arc<LoginLimiter>>, request: Request, next: Next) -> Response {
    // Always there when served by main.rs; without it (a router served some other way)
    // every caller shares one bucket, which fails safe.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(peer)| peer.ip());
    match limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            crate::metrics::refused(crate::metrics::Refusal::LoginRate);
            too_many(wait)
        }
    }
}

/// `429` with `Retry-After` in whole seconds (rounded up, at least 1).
fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many logins from your address; try again in {seconds} s"),
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        assert_eq!(client_key(a), "2001:db8:1:2::".parse::<IpAddr>().expect("ip"));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let limiter = LoginLimiter::new(LoginRate { per_second: 1, burst: 3 });
        let (one, two): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        for _ in 0..3 {
            assert_eq!(limiter.check(one), Ok(()));
        }
        let wait = limiter.check(one).expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limiter.check(two), Ok(()), "another address has its own bucket");
        assert_eq!(limiter.clients(), 2);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let header = |wait| too_many(wait).headers().get(header::RETRY_AFTER).cloned();
        assert_eq!(header(Duration::from_millis(50)), Some(HeaderValue::from(1u64)));
        assert_eq!(header(Duration::ZERO), Some(HeaderValue::from(1u64)));
        assert_eq!(header(Duration::from_millis(2001)), Some(HeaderValue::from(3u64)));
        assert_eq!(too_many(Duration::ZERO).status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn zero_is_refused_with_the_key() {
        assert!(LoginRate::default().validate("gateway").is_ok());
        let err = LoginRate { per_second: 0, burst: 5 }.validate("gateway").expect_err("zero rate");
        assert!(err.contains("`gateway.login_rate.per_second`"), "{err}");
        let err = LoginRate { per_second: 5, burst: 0 }.validate("gateway").expect_err("zero burst");
        assert!(err.contains("`gateway.login_rate.burst`"), "{err}");
    }
}
