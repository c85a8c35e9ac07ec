//! File descriptors for `ferry serve`: raise `RLIMIT_NOFILE` to what the
//! system allows, and make `--max-connections` fit inside it.

/// File descriptors kept aside from connections: listeners, the runtime,
/// standard streams, log files and the blocking pool's Maildir work.
pub const FD_RESERVE: u64 = 64;

/// File descriptors one connection may use at once: its socket and the
/// Maildir file it is delivering into.
pub const FDS_PER_CONNECTION: u64 = 2;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit now in force (`u64::MAX` for unlimited). A failure to raise it
/// leaves the limit as it was.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum.unwrap_or(u64::MAX);
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// The most connections that fit in `soft` file descriptors.
pub fn connections_that_fit(soft: u64) -> u64 {
    soft.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION
}

/// Checks `max_connections` against the file descriptor limit `soft`.
/// A value the user asked for (`explicit`) that does not fit is an error;
/// the default is lowered to what fits, with a warning. Returns the
/// connection limit to use and any warning.
pub fn fit_connections(
    max_connections: u64,
    explicit: bool,
    soft: u64,
) -> Result<(u64, Option<String>), String> {
    let fit = connections_that_fit(soft);
    if max_connections <= fit {
        return Ok((max_connections, None));
    }
    let needed = max_connections
        .saturating_mul(FDS_PER_CONNECTION)
        .saturating_add(FD_RESERVE);
    if explicit || fit == 0 {
        return Err(format!(
            "--max-connections {max_connections} needs about {needed} file descriptors, \
             but the limit (ulimit -n) is {soft}: raise the limit or use \
             --max-connections {} or less",
            fit.max(1)
        ));
    }
    Ok((
        fit,
        Some(format!(
            "the file descriptor limit (ulimit -n) is {soft}: serving at most {fit} \
             connections at once instead of {max_connections}"
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        let soft = raise_nofile();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(soft, limit.current.unwrap_or(u64::MAX));
    }

    #[test]
    fn connections_must_fit_in_the_limit() {
        assert_eq!(fit_connections(1000, true, 1_048_576), Ok((1000, None)));
        // The case: 200 descriptors cannot hold 190 connections.
        let err = fit_connections(190, true, 200).unwrap_err();
        assert!(
            err.contains("--max-connections 190 needs about 444"),
            "{err}"
        );
        assert!(err.contains("68 or less"), "{err}");
        let (lowered, warning) = fit_connections(1000, false, 1024).unwrap();
        assert_eq!(lowered, 480);
        assert!(warning.unwrap().contains("at most 480"));
        assert!(fit_connections(10, false, 10).is_err());
        assert_eq!(connections_that_fit(u64::MAX), u64::MAX / 2 - 32);
    }
}
