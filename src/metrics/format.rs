//! prometheus-client writes OpenMetrics text; node_exporter's textfile
//! collector and many scrapers read the older Prometheus text format
//! (0.0.4), where a counter's HELP and TYPE name the sample itself
//! (`..._total`) and there are no `# UNIT` or `# EOF` lines. The samples
//! are the same in both.

/// `text` (OpenMetrics, as prometheus-client encodes it) in the Prometheus
/// text format 0.0.4.
pub fn open_metrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_help: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, pending_help.take(), false);
            pending_help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let counter = rest.ends_with(" counter");
            flush_help(&mut out, pending_help.take(), counter);
            match rest.split_once(' ') {
                Some((name, kind)) if counter => {
                    out.push_str(&format!("# TYPE {name}_total {kind}\n"))
                }
                _ => out.push_str(&format!("{line}\n")),
            }
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, pending_help.take(), false);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, pending_help, false);
    out
}

/// Writes a held-back `# HELP name text` line, naming the counter's
/// sample if `counter`.
fn flush_help(out: &mut String, help: Option<&str>, counter: bool) {
    let Some(help) = help else { return };
    match help.split_once(' ') {
        Some((name, text)) if counter => out.push_str(&format!("# HELP {name}_total {text}\n")),
        None if counter => out.push_str(&format!("# HELP {help}_total\n")),
        _ => out.push_str(&format!("# HELP {help}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_sample_and_open_metrics_lines_go() {
        let open_metrics = "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
                            x_requests_total{op=\"read\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\n\
                            x_up 1\n# HELP x_seconds Time.\n# TYPE x_seconds histogram\n\
                            # UNIT x_seconds seconds\nx_seconds_sum 0.5\nx_seconds_count 1\n\
                            x_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        let text = open_metrics_to_prometheus(open_metrics);
        assert_eq!(
            text,
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\n\
             x_requests_total{op=\"read\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n\
             # HELP x_seconds Time.\n# TYPE x_seconds histogram\nx_seconds_sum 0.5\n\
             x_seconds_count 1\nx_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
