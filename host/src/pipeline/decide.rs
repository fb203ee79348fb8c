//! What to do with a record once an attempt is over: a pure decision from its outcome, its
//! attempt number, how many attempts this delivery made in place, its trips through the retry
//! topic and the handler's retry policy. `partition` applies it (the waits and the sends).

use crate::config::RetryPolicy;
use crate::record::Outcome;
use std::time::Duration;

/// Where a record goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Its outcome is final: `ok` (its events are published).
    Done,
    /// Tried again in place, now: this is the delivery's retry number `retry` (1 for the first),
    /// after the policy's backoff for it.
    RetryInPlace {
        /// Which retry in place this is (1 = the first).
        retry: u32,
    },
    /// Handed to `<topic>.retry`, to be delivered again after `delay`.
    RetryTopic {
        /// The wait before the redelivery.
        delay: Duration,
    },
    /// Sent to `<topic>.dlq`: `reject` (the handler rejected it) or `exhausted` (out of
    /// attempts).
    DeadLetter {
        /// Why.
        cause: &'static str,
    },
}

/// Decides what becomes of a record whose attempt number `attempt` ended in `outcome`, after
/// `in_place` attempts of this delivery (this one included) and `hops` trips through the retry
/// topic.
pub fn decide(outcome: &Outcome, attempt: u32, in_place: u32, hops: u32, policy: &RetryPolicy) -> Disposition {
    match outcome {
        Outcome::Ok => Disposition::Done,
        Outcome::Reject(_) => Disposition::DeadLetter { cause: "reject" },
        _ if attempt >= policy.max_attempts => Disposition::DeadLetter { cause: "exhausted" },
        _ if in_place < policy.in_place_attempts => Disposition::RetryInPlace { retry: in_place },
        _ => Disposition::RetryTopic { delay: policy.retry_topic_delay(hops) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { in_place_attempts: 3, max_attempts: 9, ..RetryPolicy::default() }
    }

    #[test]
    fn ok_is_done_and_a_rejection_is_dead_lettered_at_once() {
        assert_eq!(decide(&Outcome::Ok, 5, 1, 2, &policy()), Disposition::Done);
        assert_eq!(
            decide(&Outcome::Reject("bad".into()), 1, 1, 0, &policy()),
            Disposition::DeadLetter { cause: "reject" }
        );
    }

    #[test]
    fn a_transient_failure_is_retried_in_place_then_through_the_retry_topic() {
        let retry = Outcome::Retry("down".into());
        assert_eq!(decide(&retry, 1, 1, 0, &policy()), Disposition::RetryInPlace { retry: 1 });
        assert_eq!(decide(&retry, 2, 2, 0, &policy()), Disposition::RetryInPlace { retry: 2 });
        assert_eq!(decide(&retry, 3, 3, 0, &policy()), Disposition::RetryTopic { delay: Duration::from_secs(10) });
        assert_eq!(decide(&retry, 6, 3, 1, &policy()), Disposition::RetryTopic { delay: Duration::from_secs(50) });
        for sandbox in [Outcome::Trap("t".into()), Outcome::Timeout("t".into()), Outcome::Memory("m".into())] {
            assert_eq!(decide(&sandbox, 1, 1, 0, &policy()), Disposition::RetryInPlace { retry: 1 }, "{sandbox:?}");
        }
    }

    #[test]
    fn the_last_attempt_is_dead_lettered_as_exhausted_wherever_it_happens() {
        let retry = Outcome::Timeout("slow".into());
        assert_eq!(decide(&retry, 9, 1, 3, &policy()), Disposition::DeadLetter { cause: "exhausted" });
        let strict = RetryPolicy { in_place_attempts: 9, ..policy() };
        assert_eq!(decide(&retry, 8, 8, 0, &strict), Disposition::RetryInPlace { retry: 8 });
        assert_eq!(decide(&retry, 9, 9, 0, &strict), Disposition::DeadLetter { cause: "exhausted" });
    }
}
