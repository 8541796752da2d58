//! The man pages: clap's sections for each command (`xlb(1)`, `xlb-run(1)`, ...), then what
//! clap does not know (EXIT STATUS, FILES, EXAMPLES, SEE ALSO); and `xlb.toml(5)`, the
//! configuration file, whose reference is the commented example the package installs.

use std::{io, path::Path};

use clap::{Command, CommandFactory as _};
use clap_mangen::Man;
use roff::{Roff, bold, roman};

use super::args::Cli;

/// The example configuration, every key with its default and what it does.
const EXAMPLE_CONFIG: &str = include_str!("../../../contrib/xlb.toml");

/// Writes `xlb.1`, a page per command (`xlb-run.1`, ...) and `xlb.toml.5` into `dir`.
pub(super) fn write_all(dir: &Path) -> io::Result<()> {
    /// `command`'s page, then its subcommands' pages.
    fn pages(command: &Command, dir: &Path) -> io::Result<()> {
        let man = Man::new(command.clone());
        page(
            command,
            &mut std::fs::File::create(dir.join(man.get_filename()))?,
        )?;
        for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
            pages(sub, dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    pages(&cli, dir)?;
    config_page(&mut std::fs::File::create(dir.join("xlb.toml.5"))?)
}

/// The page of `xlb` itself, on `out`.
pub(super) fn main_page(out: &mut dyn io::Write) -> io::Result<()> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    page(&cli, out)
}

/// One command's page: clap's sections, then ours.
fn page(command: &Command, out: &mut dyn io::Write) -> io::Result<()> {
    let man = Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if command.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if command.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    let main = command.get_name() == "xlb";
    extra_sections(main).to_writer(out)?;
    if command.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// A paragraph of plain text.
fn paragraph(roff: &mut Roff, text: &str) {
    roff.control("PP", []).text([roman(text)]);
}

/// A tagged paragraph: `tag` in bold, then `text`.
fn item(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []).text([bold(tag)]).text([roman(text)]);
}

/// Lines shown as they are (`.nf`).
fn verbatim(roff: &mut Roff, lines: &str) {
    roff.control("nf", []);
    for line in lines.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
}

/// EXIT STATUS, FILES, EXAMPLES (the main page only) and SEE ALSO.
fn extra_sections(main: bool) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    item(&mut roff, "0", "Success.");
    item(
        &mut roff,
        "1",
        "An error: an invalid configuration (every error printed with its file, line and \
         column), a host that cannot run the data plane, a daemon that refused the request or \
         could not be reached.",
    );
    item(
        &mut roff,
        "2",
        "A command line clap refused (an unknown option, a missing argument). For `xlb status \
         --check`: a service has no backend that can take new flows (CRITICAL).",
    );
    paragraph(
        &mut roff,
        "`xlb status --check` exits as monitoring plugins do: 0 OK, 1 WARNING (some backends \
         cannot take new flows), 2 CRITICAL, 3 UNKNOWN (the daemon does not answer).",
    );
    roff.control("SH", ["FILES"]);
    item(
        &mut roff,
        "/etc/xlb/xlb.toml",
        "The configuration (see xlb.toml(5)).",
    );
    item(
        &mut roff,
        "/run/xlb/xlb.sock",
        "The daemon's control socket (mode 0600; --socket).",
    );
    item(
        &mut roff,
        "/sys/fs/bpf/xlb",
        "The pinned maps and links (pin_path): the data plane outlives the daemon, and a \
         restarted daemon takes it over with every flow.",
    );
    item(
        &mut roff,
        "/var/lib/xlb/operator.json",
        "Operators' settings on backends, kept across restarts (--state-dir).",
    );
    if main {
        roff.control("SH", ["EXAMPLES"]);
        verbatim(
            &mut roff,
            "xlb check --config /etc/xlb/xlb.toml\n\
             systemctl enable --now xlb\n\
             xlb status\n\
             xlb backend drain web 198.18.1.12:8080\n\
             xlb trace web --client 198.18.0.0/24\n\
             xlb reload",
        );
    }
    roff.control("SH", ["SEE ALSO"]);
    let pages = if main {
        "xlb-run(1), xlb-check(1), xlb-status(1), xlb-backend(1), xlb-reload(1), xlb-trace(1), \
         xlb.toml(5), systemd.service(5), ipvsadm(8), haproxy(1)"
    } else {
        "xlb(1), xlb.toml(5)"
    };
    paragraph(&mut roff, pages);
    roff
}

/// `xlb.toml(5)`: what the file is, how it is checked and reloaded, and the example.
fn config_page(out: &mut dyn io::Write) -> io::Result<()> {
    let mut roff = Roff::new();
    roff.control("TH", ["xlb.toml", "5", "", crate::VERSION, "xlb"]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(
        "xlb.toml - the configuration of the xlb load balancer",
    )]);
    roff.control("SH", ["DESCRIPTION"]);
    paragraph(
        &mut roff,
        "A TOML file: the interfaces xlb attaches to, its flow tables and timeouts, the \
         services (a VIP, port and protocol each, with backends or locality pools, health \
         and load checks, a scheduler and a forwarding mode), and optionally the route \
         announcement ([announce]) and the fleet that shares flows ([fleet]).",
    );
    paragraph(
        &mut roff,
        "Unknown keys, values of the wrong type or out of range, duplicate services or \
         backends, backends on a VIP, and what the host cannot do (interfaces, forwarding, \
         routes to the backends) are errors: `xlb check` prints every one with its line and \
         column. `xlb reload` (or SIGHUP) applies a valid file as a difference, and refuses \
         an invalid one whole.",
    );
    roff.control("SH", ["EXAMPLE"]);
    paragraph(
        &mut roff,
        "Every key, with its default and what it does (installed as /etc/xlb/xlb.toml):",
    );
    verbatim(&mut roff, EXAMPLE_CONFIG);
    roff.control("SH", ["SEE ALSO"]);
    paragraph(&mut roff, "xlb(1), xlb-check(1), xlb-reload(1)");
    roff.to_writer(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_have_exit_status_files_and_see_also_and_the_config_has_its_own() {
        let dir = std::env::temp_dir().join(format!("xlb-man-{}", std::process::id()));
        write_all(&dir).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let main = read("xlb.1");
        for section in [
            "EXIT STATUS",
            "FILES",
            "EXAMPLES",
            "SEE ALSO",
            "SUBCOMMANDS",
        ] {
            assert!(
                main.contains(&format!(".SH \"{section}\""))
                    || main.contains(&format!(".SH {section}")),
                "{section}"
            );
        }
        let run = read("xlb-run.1");
        assert!(run.contains("EXIT STATUS") && run.contains("xlb.toml(5)"));
        assert!(!run.contains("EXAMPLES"));
        let config = read("xlb.toml.5");
        assert!(config.contains("[[service]]") && config.contains("interfaces"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
