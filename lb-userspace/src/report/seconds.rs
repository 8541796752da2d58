//! Durations in the reports' JSON: seconds, rounded to the millisecond (the clocks'
//! nanoseconds are noise to whoever reads them).

use serde::Serializer;

/// `seconds` rounded to the millisecond.
fn rounded(seconds: f64) -> f64 {
    (seconds * 1_000.0).round() / 1_000.0
}

/// Serializes seconds rounded to the millisecond.
pub(super) fn millis<S: Serializer>(seconds: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(rounded(*seconds))
}

/// [`millis`] for seconds that may be unknown.
pub(super) fn maybe_millis<S: Serializer>(
    seconds: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match seconds {
        Some(seconds) => serializer.serialize_some(&rounded(*seconds)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_are_rounded_to_the_millisecond() {
        let json = |s: f64| {
            let mut out = Vec::new();
            super::millis(&s, &mut serde_json::Serializer::new(&mut out)).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(json(75.000_000_123), "75.0");
        assert_eq!(json(0.300_000_011_920_928_96), "0.3");
        assert_eq!(json(1.2345), "1.235");
    }
}
