//! What each account (an app, or a uid: [`super::rules::account_of`]) is using:
//! requests now, tokens in the last 60 seconds and today (UTC). A request is
//! admitted against its rule's limits and holds a [`Ticket`] until it ends;
//! its tokens (prompt and generated) are charged when it ends, so a request
//! admitted just under a limit may pass it once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::rules::AppRule;

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("{account} has {running} requests running or queued (its max_concurrent)")]
    Concurrent { account: String, running: u32 },
    #[error("retry in {retry_secs} s: {account} used {used} of its {limit} tokens {per}")]
    Quota { account: String, used: u64, limit: u64, per: &'static str, retry_secs: u64 },
}

#[derive(Default)]
struct Account {
    running: u32,
    /// Tokens charged in the last minute, oldest first.
    minute: VecDeque<(Instant, u64)>,
    /// (UTC day number, tokens charged that day, requests that day)
    day: (u64, u64, u32),
}

impl Account {
    fn prune(&mut self, now: Instant, today: u64) {
        while self.minute.front().is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE) {
            self.minute.pop_front();
        }
        if self.day.0 != today {
            self.day = (today, 0, 0);
        }
    }

    fn last_minute(&self) -> u64 {
        self.minute.iter().map(|(_, n)| n).sum()
    }
}

/// One account's numbers (`ListUsage`).
#[derive(Clone, Debug, PartialEq)]
pub struct AccountUsage {
    pub account: String,
    pub running: u32,
    pub tokens_last_minute: u64,
    pub tokens_today: u64,
    pub requests_today: u32,
}

#[derive(Default)]
pub struct Usage {
    accounts: Mutex<HashMap<String, Account>>,
}

fn utc_day_and_secs_left() -> (u64, u64) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs / 86400, 86400 - secs % 86400)
}

impl Usage {
    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Account>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request of `account` under `rule` (None: no limits), counting it as running
    /// until its ticket is dropped.
    pub fn admit(self: &Arc<Self>, account: &str, rule: Option<&AppRule>) -> Result<Ticket, Refusal> {
        let now = Instant::now();
        let (today, day_left) = utc_day_and_secs_left();
        let mut accounts = self.accounts();
        let a = accounts.entry(account.to_string()).or_default();
        a.prune(now, today);
        if let Some(r) = rule {
            if let Some(max) = r.max_concurrent
                && a.running >= max
            {
                return Err(Refusal::Concurrent { account: account.to_string(), running: a.running });
            }
            if let Some(limit) = r.tokens_per_minute {
                let used = a.last_minute();
                if used >= limit {
                    // when enough of the oldest charges leave the window
                    let mut left = used;
                    let mut retry = MINUTE;
                    for (t, n) in &a.minute {
                        left -= n;
                        if left < limit {
                            retry = MINUTE.saturating_sub(now.duration_since(*t));
                            break;
                        }
                    }
                    let retry_secs = retry.as_secs_f64().ceil().max(1.0) as u64;
                    return Err(Refusal::Quota {
                        account: account.to_string(),
                        used,
                        limit,
                        per: "per minute",
                        retry_secs,
                    });
                }
            }
            if let Some(limit) = r.tokens_per_day
                && a.day.1 >= limit
            {
                return Err(Refusal::Quota {
                    account: account.to_string(),
                    used: a.day.1,
                    limit,
                    per: "per day (UTC)",
                    retry_secs: day_left,
                });
            }
        }
        a.running += 1;
        a.day.2 += 1;
        Ok(Ticket { usage: self.clone(), account: account.to_string(), tokens: 0 })
    }

    fn end(&self, account: &str, tokens: u64) {
        let now = Instant::now();
        let (today, _) = utc_day_and_secs_left();
        let mut accounts = self.accounts();
        let a = accounts.entry(account.to_string()).or_default();
        a.prune(now, today);
        a.running = a.running.saturating_sub(1);
        if tokens > 0 {
            a.minute.push_back((now, tokens));
            a.day.1 += tokens;
        }
    }

    /// Every account seen today or running now, by name.
    pub fn snapshot(&self) -> Vec<AccountUsage> {
        let now = Instant::now();
        let (today, _) = utc_day_and_secs_left();
        let mut accounts = self.accounts();
        accounts.retain(|_, a| {
            a.prune(now, today);
            a.running > 0 || a.day.2 > 0
        });
        let mut list: Vec<AccountUsage> = accounts
            .iter()
            .map(|(k, a)| AccountUsage {
                account: k.clone(),
                running: a.running,
                tokens_last_minute: a.last_minute(),
                tokens_today: a.day.1,
                requests_today: a.day.2,
            })
            .collect();
        list.sort_by(|a, b| a.account.cmp(&b.account));
        list
    }
}

/// A request's place in its account: counted as running until dropped, when the tokens
/// it was charged are added.
pub struct Ticket {
    usage: Arc<Usage>,
    account: String,
    tokens: u64,
}

impl Ticket {
    /// The tokens the request used (prompt and generated), charged when the ticket goes.
    pub fn charge(&mut self, tokens: u64) {
        self.tokens = tokens;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.usage.end(&self.account, self.tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(max_concurrent: Option<u32>, per_minute: Option<u64>, per_day: Option<u64>) -> AppRule {
        AppRule { max_concurrent, tokens_per_minute: per_minute, tokens_per_day: per_day, ..Default::default() }
    }

    #[test]
    fn concurrent_requests_are_bounded_until_tickets_go() {
        let u = Arc::new(Usage::default());
        let r = rule(Some(2), None, None);
        let a = u.admit("uid:1", Some(&r)).unwrap();
        let _b = u.admit("uid:1", Some(&r)).unwrap();
        assert_eq!(u.admit("uid:1", Some(&r)).err(), Some(Refusal::Concurrent { account: "uid:1".into(), running: 2 }));
        assert!(u.admit("uid:2", Some(&r)).is_ok(), "accounts are separate");
        drop(a);
        assert!(u.admit("uid:1", Some(&r)).is_ok());
        assert!(u.admit("uid:1", None).is_ok(), "no rule, no limit");
    }

    #[test]
    fn token_quotas_refuse_with_the_time_to_wait() {
        let u = Arc::new(Usage::default());
        let r = rule(None, Some(50), Some(100));
        for _ in 0..2 {
            let mut t = u.admit("flatpak:x", Some(&r)).unwrap();
            t.charge(29);
        }
        match u.admit("flatpak:x", Some(&r)) {
            Err(Refusal::Quota { used: 58, limit: 50, per: "per minute", retry_secs, .. }) => {
                assert!((1..=60).contains(&retry_secs), "{retry_secs}")
            }
            other => panic!("{:?}", other.err()),
        }
        let s = u.snapshot();
        assert_eq!(s[0].tokens_last_minute, 58);
        assert_eq!((s[0].tokens_today, s[0].requests_today, s[0].running), (58, 2, 0));
        // the daily quota, once the minute's would allow
        let daily = rule(None, None, Some(50));
        match u.admit("flatpak:x", Some(&daily)) {
            Err(Refusal::Quota { per: "per day (UTC)", retry_secs, .. }) => assert!((1..=86400).contains(&retry_secs)),
            other => panic!("{:?}", other.err()),
        }
        let e = Refusal::Quota { account: "uid:7".into(), used: 58, limit: 50, per: "per minute", retry_secs: 12 };
        assert_eq!(e.to_string(), "retry in 12 s: uid:7 used 58 of its 50 tokens per minute");
    }
}
