//! The driver's one deadline loop: try something until it is done or its time is up.
//!
//! Every wait of the driver that polls (a guest command's end, a device appearing, a socket
//! accepting, a daemon answering) goes through [`until`], so each is bounded the same way and
//! paced on purpose: under TCG every poll of the guest costs its vCPU.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

/// How often to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Try back to back for this long first (a short command ends within tens of ms).
    pub tight: Duration,
    /// Then pause this long, doubling each time ...
    pub first: Duration,
    /// ... up to this.
    pub max: Duration,
    /// Past `max`, a long wait's pause grows to a twentieth of the time waited so far, up to
    /// this (zero: never past `max`): what ends after a long wait is seen at most 5% late, and
    /// the wait costs fewer tries.
    pub stretch_to: Duration,
}

impl Pace {
    /// A fixed pause between tries.
    pub const fn every(pause: Duration) -> Pace {
        Pace { tight: Duration::ZERO, first: pause, max: pause, stretch_to: Duration::ZERO }
    }
    /// Pauses that start at `first` and double up to `max`.
    pub const fn backoff(first: Duration, max: Duration) -> Pace {
        Pace { tight: Duration::ZERO, first, max, stretch_to: Duration::ZERO }
    }
    /// Back to back for `tight`, then as `self`.
    pub const fn after_tight(self, tight: Duration) -> Pace {
        Pace { tight, ..self }
    }
    /// As `self`, and past its `max` the pause grows with the time waited, up to `longest`
    /// (see [`Pace::stretch_to`](Pace#structfield.stretch_to)).
    pub const fn stretch_to(self, longest: Duration) -> Pace {
        Pace { stretch_to: longest, ..self }
    }
    /// The pause after `pause`, `waited` into the wait.
    fn next(&self, pause: Duration, waited: Duration) -> Duration {
        (pause * 2).min(self.max).max((waited / 20).min(self.stretch_to))
    }
}

/// What a wait gave: the value, or the time it gave up after.
#[derive(Debug)]
pub enum Polled<T> {
    /// The attempt returned this value.
    Done(T),
    /// The time was up; the caller says what it waited for and what it saw last.
    TimedOut(Duration),
}

/// Calls `attempt` with the time left until it returns `Ok(Some(_))`, an error (which ends the
/// wait at once), or `timeout` has passed. The first try is always made, even with no time.
pub async fn until<T, F, Fut>(timeout: Duration, pace: Pace, mut attempt: F) -> Result<Polled<T>>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut pause = pace.first;
    // At a terminal, a wait that lasts shows its elapsed time against its bound.
    let mut line: Option<crate::progress::Line> = None;
    loop {
        match &line {
            Some(l) => l.set_position(started.elapsed()),
            None => line = crate::progress::wait_line(started, timeout),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(v) = attempt(left).await? {
            return Ok(Polled::Done(v));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Polled::TimedOut(started.elapsed()));
        }
        if started.elapsed() >= pace.tight {
            tokio::time::sleep(pause.min(left)).await;
            pause = pace.next(pause, started.elapsed());
        }
    }
}

/// The pace of [`retry`]: soon at first, then every second, as the NixOS driver's `retry`.
pub const RETRY: Pace = Pace::backoff(Duration::from_millis(100), Duration::from_secs(1));

/// What [`retry`] gives up with: what was awaited, for how long, how many tries.
#[derive(Debug, thiserror::Error)]
#[error("{what}: not done after {tries} tries in {waited:?}")]
pub struct GaveUp {
    /// What was awaited.
    pub what: String,
    /// How long it tried.
    pub waited: Duration,
    /// How many times it tried.
    pub tries: u32,
}

/// Calls `attempt` until it returns `Ok(Some(value))`, an error (returned at once), or
/// `timeout` has passed, at the [`RETRY`] pace: the NixOS driver's `retry`, bounded and typed.
/// The timeout's error is a [`GaveUp`] naming `what`. Within a scenario, prefer
/// `Machine::retry`, whose error also shows the machine's console.
pub async fn retry<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let mut tries = 0u32;
    match until(timeout, RETRY, |_| {
        tries += 1;
        attempt()
    })
    .await?
    {
        Polled::Done(v) => Ok(v),
        Polled::TimedOut(waited) => Err(GaveUp { what: what.to_string(), waited, tries }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn it_returns_what_the_attempt_found() {
        let tries = AtomicU32::new(0);
        let got = until(Duration::from_secs(5), Pace::every(Duration::from_millis(1)), |_| async {
            Ok((tries.fetch_add(1, Ordering::Relaxed) == 3).then_some("found"))
        })
        .await
        .unwrap();
        assert!(matches!(got, Polled::Done("found")));
        assert_eq!(tries.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn it_gives_up_after_the_timeout_and_tries_at_least_once() {
        let tries = AtomicU32::new(0);
        let started = Instant::now();
        let got =
            until(Duration::from_millis(120), Pace::every(Duration::from_millis(50)), |_| async {
                tries.fetch_add(1, Ordering::Relaxed);
                Ok(None::<()>)
            })
            .await
            .unwrap();
        let Polled::TimedOut(waited) = got else { panic!("expected a timeout") };
        assert!(
            waited >= Duration::from_millis(120) && started.elapsed() < Duration::from_secs(2),
            "{waited:?}"
        );
        let n = tries.load(Ordering::Relaxed);
        assert!((2..=5).contains(&n), "{n} tries in 120 ms at 50 ms");
        let zero = until(Duration::ZERO, Pace::every(Duration::from_secs(1)), |_| async {
            Ok(None::<()>)
        })
        .await
        .unwrap();
        assert!(matches!(zero, Polled::TimedOut(_)));
    }

    #[tokio::test]
    async fn an_error_ends_the_wait_at_once() {
        let got = until(Duration::from_secs(60), Pace::every(Duration::from_secs(1)), |_| async {
            Err::<Option<()>, _>(anyhow::anyhow!("broken"))
        })
        .await;
        assert_eq!(got.unwrap_err().to_string(), "broken");
    }

    #[tokio::test]
    async fn pauses_double_up_to_the_maximum() {
        let times = std::sync::Mutex::new(Vec::new());
        let _ = until(
            Duration::from_millis(300),
            Pace::backoff(Duration::from_millis(10), Duration::from_millis(40)),
            |_| async {
                times.lock().unwrap().push(Instant::now());
                Ok(None::<()>)
            },
        )
        .await;
        let t = times.into_inner().unwrap();
        let gaps: Vec<u128> = t.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert!(gaps.len() >= 4, "{gaps:?}");
        assert!(gaps[0] >= 10 && gaps[1] >= 20 && gaps[2] >= 40, "{gaps:?}");
        // Capped at 40 ms: were the pauses still doubling, every later gap would be 80 ms or more
        // (a pause is never shorter than asked; a busy machine only makes some longer).
        assert!(gaps[3..].iter().any(|g| *g < 80), "{gaps:?}");
    }

    #[test]
    fn a_long_wait_stretches_its_pause_to_a_twentieth_of_the_wait_up_to_its_bound() {
        let ms = Duration::from_millis;
        let pace = Pace::backoff(ms(1), ms(16)).stretch_to(ms(100));
        assert_eq!(pace.next(ms(4), ms(50)), ms(8), "doubling first");
        assert_eq!(pace.next(ms(16), ms(200)), ms(16), "at max while 1/20 of the wait is less");
        assert_eq!(pace.next(ms(16), ms(1000)), ms(50), "1/20 of a second waited");
        assert_eq!(pace.next(ms(50), ms(60_000)), ms(100), "never past stretch_to");
        // Without stretch_to, a wait's pause never passes max, however long it lasts.
        assert_eq!(Pace::backoff(ms(1), ms(16)).next(ms(16), ms(60_000)), ms(16));
    }

    #[tokio::test]
    async fn retry_returns_the_value_or_says_what_it_gave_up_on() {
        let mut n = 0;
        let v = retry("three tries", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { Ok((n == 3).then_some(n)) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = retry("never", Duration::from_millis(150), || async { Ok(None::<()>) })
            .await
            .unwrap_err();
        let gave_up = e.downcast_ref::<GaveUp>().expect("a GaveUp");
        assert!(gave_up.tries >= 2, "{gave_up:?}");
        assert!(e.to_string().starts_with("never: not done after"), "{e}");
        let e = retry("fails", Duration::from_secs(5), || async {
            anyhow::bail!("boom") as Result<Option<()>>
        })
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
    }
}
