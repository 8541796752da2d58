//! The two text formats the endpoint answers in, and how a scrape picks one: OpenMetrics
//! when the scraper's `Accept` header prefers it (Prometheus does), else the classic
//! Prometheus text format (version 0.0.4), which curl, node_exporter's textfile tooling and
//! `promtool check metrics` read.
//!
//! The metrics are encoded once, in OpenMetrics (prometheus-client encodes no other format);
//! the classic text is derived from that: the formats differ, for what xlb serves (counters
//! and gauges without units, exemplars or created times), only in the name a counter's
//! metadata carries (`foo` in OpenMetrics, `foo_total` in the classic format, the name of its
//! samples) and in the `# EOF` line.

/// A text format of the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4.
    Classic,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics if it names it with a quality at
    /// least that of any text/plain or `*/*` entry, the classic format otherwise (also
    /// without a header).
    pub(crate) fn from_accept(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Classic;
        };
        let (mut open, mut classic) = (None::<f32>, None::<f32>);
        for entry in accept.split(',') {
            let mut parts = entry.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut open,
                "text/plain" | "text/*" | "*/*" => &mut classic,
                _ => continue,
            };
            *slot = Some(slot.map_or(quality, |q| q.max(quality)));
        }
        match open {
            Some(q) if q > 0.0 && q >= classic.unwrap_or(0.0) => Self::OpenMetrics,
            _ => Self::Classic,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The classic text format of an OpenMetrics exposition of counters and gauges.
pub(crate) fn classic_from_openmetrics(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    // A family's HELP line comes before its TYPE line, which says whether it is a counter.
    let mut help: Option<(&str, &str)> = None;
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header Prometheus 2.x sends.
    const PROMETHEUS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn scrapers_get_the_format_they_prefer() {
        let cases = [
            (None, Format::Classic),
            (Some("*/*"), Format::Classic),
            (Some("text/plain"), Format::Classic),
            (Some(PROMETHEUS), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Format::Classic,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Classic),
        ];
        for (accept, format) in cases {
            assert_eq!(Format::from_accept(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn counters_carry_their_sample_name_in_the_classic_format() {
        let open = "# HELP a_packets Packets.\n# TYPE a_packets counter\n\
                    a_packets_total{x=\"1\"} 3\n# HELP a_flows Flows.\n# TYPE a_flows gauge\n\
                    a_flows 2\n# EOF\n";
        let classic = "# HELP a_packets_total Packets.\n# TYPE a_packets_total counter\n\
                       a_packets_total{x=\"1\"} 3\n# HELP a_flows Flows.\n# TYPE a_flows gauge\n\
                       a_flows 2\n";
        assert_eq!(classic_from_openmetrics(open), classic);
    }
}
