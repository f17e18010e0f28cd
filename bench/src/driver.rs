//! The closed-loop driver: one tokio task per caller, each issuing requests back to back until
//! the deadline; latencies of successful calls go into an HDR histogram in microseconds.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

/// Highest latency the histograms track (longer ones are clamped to it): one minute.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// What one call did.
#[derive(Debug)]
pub enum Step {
    /// The call succeeded (and answered what was expected).
    Ok,
    /// The call failed; the text names the request, the status code and the message.
    Failed(String),
    /// The caller has nothing left to send (a pool of keys ran out); no call was made.
    Exhausted,
}

/// One in-flight slot of the closed loop.
pub trait Caller: Send + 'static {
    /// Issues the `seq`-th request of this caller and waits for its answer.
    fn call(&mut self, seq: u64) -> impl Future<Output = Step> + Send;
}

/// A histogram with microsecond resolution and 3 significant digits.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).context("create a latency histogram")
}

/// The outcome of one closed-loop run.
#[derive(Debug)]
pub struct Measured {
    /// Latencies of the successful calls of the measured window, in microseconds.
    pub histogram: Histogram<u64>,
    /// Successful calls in the measured window.
    pub ok: u64,
    /// Failed calls, warm-up included.
    pub errors: u64,
    /// The first failure, in time.
    pub first_error: Option<String>,
    /// From the end of the warm-up to the last answer of the measured window.
    pub elapsed: Duration,
    /// Whether a caller ran out of keys before the deadline.
    pub exhausted: bool,
}

impl Measured {
    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        per_second(self.ok, self.elapsed)
    }

    /// Failed calls over all calls.
    pub fn error_ratio(&self) -> f64 {
        let all = self.ok + self.errors;
        if all == 0 {
            0.0
        } else {
            self.errors as f64 / all as f64
        }
    }
}

/// `count` per second over `elapsed` (0 when nothing elapsed).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

struct TaskOutcome {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<(Instant, String)>,
    last_answer: Option<Instant>,
    exhausted: bool,
}

/// Runs every caller in its own task, back to back: calls started during `warmup` are not
/// measured; calls start until `warmup + duration` has passed.
pub async fn closed_loop<C: Caller>(
    callers: Vec<C>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::with_capacity(callers.len());
    for mut caller in callers {
        let mut outcome = TaskOutcome {
            histogram: new_histogram()?,
            ok: 0,
            errors: 0,
            first_error: None,
            last_answer: None,
            exhausted: false,
        };
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let step = caller.call(seq).await;
                seq += 1;
                let answered = Instant::now();
                let measured = sent >= measure_from;
                match step {
                    Step::Ok if measured => {
                        let micros = u64::try_from(answered.duration_since(sent).as_micros())
                            .unwrap_or(MAX_LATENCY_MICROS);
                        outcome
                            .histogram
                            .saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
                        outcome.ok += 1;
                        outcome.last_answer = Some(answered);
                    }
                    Step::Ok => {}
                    Step::Failed(error) => {
                        outcome.errors += 1;
                        if outcome.first_error.is_none() {
                            outcome.first_error = Some((answered, error));
                        }
                        if measured {
                            outcome.last_answer = Some(answered);
                        }
                    }
                    Step::Exhausted => {
                        outcome.exhausted = true;
                        break;
                    }
                }
            }
            outcome
        }));
    }
    let mut measured = Measured {
        histogram: new_histogram()?,
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        exhausted: false,
    };
    let mut first_error: Option<(Instant, String)> = None;
    let mut last_answer = measure_from;
    for task in tasks {
        let outcome = task.await.context("a load task failed")?;
        measured
            .histogram
            .add(&outcome.histogram)
            .context("merge latency histograms")?;
        measured.ok += outcome.ok;
        measured.errors += outcome.errors;
        measured.exhausted |= outcome.exhausted;
        if let Some(answer) = outcome.last_answer {
            last_answer = last_answer.max(answer);
        }
        if let Some((at, error)) = outcome.first_error
            && first_error.as_ref().is_none_or(|(first_at, _)| at < *first_at)
        {
            first_error = Some((at, error));
        }
    }
    measured.elapsed = last_answer.duration_since(measure_from);
    measured.first_error = first_error.map(|(_, error)| error);
    Ok(measured)
}
