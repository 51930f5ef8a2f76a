//! Deadlines as commands give them: `EX`, `PX`, `EXAT`, `PXAT` and the
//! `EXPIRE` family, in Unix milliseconds.

use super::*;

/// How a command gives a deadline: `EX`, `PX`, `EXAT` and `PXAT`, or which
/// of `EXPIRE`, `PEXPIRE`, `EXPIREAT` and `PEXPIREAT` it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DeadlineUnit {
    /// Seconds from now (`EX`).
    Seconds,
    /// Milliseconds from now (`PX`).
    Millis,
    /// A Unix time in seconds (`EXAT`).
    UnixSeconds,
    /// A Unix time in milliseconds (`PXAT`).
    UnixMillis,
}

impl DeadlineUnit {
    /// The unit an option names: `EX`, `PX`, `EXAT` or `PXAT`, in any case.
    pub(super) fn parse(option: &[u8]) -> Option<Self> {
        [
            ("EX", DeadlineUnit::Seconds),
            ("PX", DeadlineUnit::Millis),
            ("EXAT", DeadlineUnit::UnixSeconds),
            ("PXAT", DeadlineUnit::UnixMillis),
        ]
        .into_iter()
        .find_map(|(word, unit)| eq(option, word).then_some(unit))
    }

    /// The deadline `n` of this unit gives, in Unix milliseconds, counting
    /// from `now_ms`; `None` when it overflows.
    pub(super) fn deadline_ms(self, n: i64, now_ms: i64) -> Option<i64> {
        match self {
            DeadlineUnit::Seconds => n.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms)),
            DeadlineUnit::Millis => n.checked_add(now_ms),
            DeadlineUnit::UnixSeconds => n.checked_mul(1000),
            DeadlineUnit::UnixMillis => Some(n),
        }
    }
}

pub(super) fn invalid_expire(command: &str) -> Reply {
    Reply::Error(format!("ERR invalid expire time in '{command}' command"))
}

/// The deadline an `EX`-style option gives with its argument, which must be
/// a positive integer; `command` names the command in the errors.
pub(super) fn deadline(
    unit: DeadlineUnit,
    arg: &[u8],
    command: &str,
    now_ms: i64,
) -> Result<i64, Reply> {
    let n = int(arg).ok_or_else(not_integer)?;
    if n <= 0 {
        return Err(invalid_expire(command));
    }
    unit.deadline_ms(n, now_ms)
        .ok_or_else(|| invalid_expire(command))
}
