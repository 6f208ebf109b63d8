# julia-fcgi: build, install, package.
#
#   make                        release binary, man page, shell completions
#   make install DESTDIR=DIR    the install layout below, under DIR (default /)
#   make uninstall DESTDIR=DIR  removes what install put there (not the config)
#   make packages               the .deb and the .rpm, in target/packages/
#   make check-packages         packages, then lintian and rpmlint on them
#   make package-tools          cargo-deb and cargo-generate-rpm, if missing
#   make sysimage               the pool sysimage for this tree's worker, in
#                               target/sysimage/ (SYSIMAGE_ARGS='--base minimal')
#
# The install layout is written down here and nowhere else. `make packages`
# stages it with `make install DESTDIR=target/pkgroot`, and the .deb and .rpm
# definitions in Cargo.toml ([package.metadata.deb] and
# [package.metadata.generate-rpm]) take that staged tree as it is: they only
# say which of its files are programs, configuration or documentation.
#
# One version, Cargo.toml's: `julia-fcgi --version` (clap), the man page
# (build.rs) and both packages (cargo-deb, cargo-generate-rpm) all read it.

CARGO ?= cargo
INSTALL ?= install
SED ?= sed
GZIP ?= gzip

prefix ?= /usr
sbindir ?= $(prefix)/sbin
datadir ?= $(prefix)/share
pkgdatadir ?= $(datadir)/julia-fcgi
mandir ?= $(datadir)/man
docdir ?= $(datadir)/doc/julia-fcgi
sysconfdir ?= /etc
nginxsnippetdir ?= $(sysconfdir)/nginx/snippets
# systemd's vendor directories. Debian 12's pkg-config says /lib/systemd/...,
# the same directory there (/lib is /usr/lib); /usr/lib is right everywhere.
systemdsystemunitdir ?= /usr/lib/systemd/system
sysusersdir ?= /usr/lib/sysusers.d
tmpfilesdir ?= /usr/lib/tmpfiles.d
bashcompletiondir ?= $(datadir)/bash-completion/completions
zshcompletiondir ?= $(datadir)/zsh/vendor-completions
fishcompletiondir ?= $(datadir)/fish/vendor_completions.d

# The packages' own revision (Debian revision, RPM release) of this version.
PKG_RELEASE ?= 1
# Dates in the packages (file times, the Debian changelog's): the last
# commit's, so that building the same commit twice gives the same packages.
# Not passed to cargo build: the binary does not depend on it.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)

# Pinned tool versions for `make package-tools`.
CARGO_DEB_VERSION ?= 3.8.0
CARGO_GENERATE_RPM_VERSION ?= 0.21.1

TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN := $(TARGET_DIR)/release/julia-fcgi
# build.rs writes the man page and completions to its OUT_DIR, whose name
# has a hash in it; `make build` copies them here.
GENERATED := $(TARGET_DIR)/release/julia-fcgi-generated
# Where `make packages` stages the layout and leaves the packages. Fixed
# paths: Cargo.toml's package metadata names the stage and the changelog.
STAGE := target/pkgroot
DEB_CHANGELOG := target/debian-changelog
PACKAGES := target/packages

VERSION = $(shell $(CARGO) pkgid | $(SED) 's/.*[#@]//')
DEB_MAINTAINER = $(shell $(SED) -n 's/^maintainer = "\(.*\)"$$/\1/p' Cargo.toml)

# The julia `make sysimage` builds for (the workers must run the same one).
JULIA ?= $(shell command -v julia || echo /usr/bin/julia)
SYSIMAGE_ARGS ?=
# Settings resolve a service user as root; the build does not run as it.
SYSIMAGE_USER ?= $(if $(filter 0,$(shell id -u)),-u nobody)

.PHONY: all build install uninstall packages check-packages package-tools clean-packages sysimage

all: build

# cargo decides what is stale. The JSON messages name build.rs's OUT_DIR: the
# only path+file:// package is this one.
build:
	@mkdir -p $(GENERATED)
	$(CARGO) build --release --locked --message-format=json-render-diagnostics > $(GENERATED)/cargo-messages.json
	@out=$$($(SED) -n '/"reason":"build-script-executed"/{/"package_id":"path+file:/s/.*"out_dir":"\([^"]*\)".*/\1/p}' $(GENERATED)/cargo-messages.json | tail -n 1); \
	test -n "$$out" || { echo "make: cargo reported no OUT_DIR for julia-fcgi's build script" >&2; exit 1; }; \
	rm -rf $(GENERATED)/man $(GENERATED)/completions; \
	cp -R "$$out/man" "$$out/completions" $(GENERATED)/

# The units name the binary and the config by absolute path; they follow
# sbindir and sysconfdir (unchanged with the defaults).
UNIT_PATHS := -e 's|/usr/sbin/julia-fcgi|$(sbindir)/julia-fcgi|g' \
	-e 's|/etc/julia-fcgi/|$(sysconfdir)/julia-fcgi/|g'

install: build
	$(INSTALL) -D -m 0755 $(BIN) $(DESTDIR)$(sbindir)/julia-fcgi
	$(INSTALL) -D -m 0644 julia/worker.jl $(DESTDIR)$(pkgdatadir)/worker.jl
	$(INSTALL) -d $(DESTDIR)$(pkgdatadir)/src
	$(INSTALL) -m 0644 julia/src/*.jl $(DESTDIR)$(pkgdatadir)/src/
	$(INSTALL) -d $(DESTDIR)$(pkgdatadir)/build
	$(INSTALL) -m 0644 julia/build/*.jl $(DESTDIR)$(pkgdatadir)/build/
	$(INSTALL) -d $(DESTDIR)$(systemdsystemunitdir)
	for unit in julia-fcgi.socket julia-fcgi.service julia-fcgi@.socket julia-fcgi@.service; do \
		$(SED) $(UNIT_PATHS) systemd/$$unit > $(DESTDIR)$(systemdsystemunitdir)/$$unit && \
		chmod 0644 $(DESTDIR)$(systemdsystemunitdir)/$$unit || exit 1; \
	done
	$(INSTALL) -D -m 0644 packaging/sysusers.d/julia-fcgi.conf $(DESTDIR)$(sysusersdir)/julia-fcgi.conf
	$(INSTALL) -D -m 0644 packaging/tmpfiles.d/julia-fcgi.conf $(DESTDIR)$(tmpfilesdir)/julia-fcgi.conf
	$(INSTALL) -D -m 0644 packaging/julia-fcgi.toml $(DESTDIR)$(sysconfdir)/julia-fcgi/julia-fcgi.toml
	$(INSTALL) -D -m 0644 packaging/pools/example.toml $(DESTDIR)$(docdir)/pools/example.toml
	$(INSTALL) -D -m 0644 packaging/nginx/julia-fcgi.conf $(DESTDIR)$(nginxsnippetdir)/julia-fcgi.conf
	$(INSTALL) -d $(DESTDIR)$(mandir)/man8
	for page in $(GENERATED)/man/*.8; do \
		$(GZIP) -9n < $$page > $(DESTDIR)$(mandir)/man8/$${page##*/}.gz && \
		chmod 0644 $(DESTDIR)$(mandir)/man8/$${page##*/}.gz || exit 1; \
	done
	$(INSTALL) -D -m 0644 $(GENERATED)/completions/julia-fcgi.bash $(DESTDIR)$(bashcompletiondir)/julia-fcgi
	$(INSTALL) -D -m 0644 $(GENERATED)/completions/_julia-fcgi $(DESTDIR)$(zshcompletiondir)/_julia-fcgi
	$(INSTALL) -D -m 0644 $(GENERATED)/completions/julia-fcgi.fish $(DESTDIR)$(fishcompletiondir)/julia-fcgi.fish
	$(INSTALL) -D -m 0644 README.md $(DESTDIR)$(docdir)/README.md
	find examples -type f -name '*.jl' | LC_ALL=C sort | while read -r page; do \
		$(INSTALL) -D -m 0644 "$$page" "$(DESTDIR)$(docdir)/$$page" || exit 1; \
	done

# The configuration files stay, as a package's removal keeps conffiles.
uninstall:
	rm -f $(DESTDIR)$(sbindir)/julia-fcgi \
		$(DESTDIR)$(systemdsystemunitdir)/julia-fcgi.socket \
		$(DESTDIR)$(systemdsystemunitdir)/julia-fcgi.service \
		$(DESTDIR)$(systemdsystemunitdir)/julia-fcgi@.socket \
		$(DESTDIR)$(systemdsystemunitdir)/julia-fcgi@.service \
		$(DESTDIR)$(sysusersdir)/julia-fcgi.conf \
		$(DESTDIR)$(tmpfilesdir)/julia-fcgi.conf \
		$(DESTDIR)$(mandir)/man8/julia-fcgi.8.gz \
		$(DESTDIR)$(mandir)/man8/julia-fcgi-*.8.gz \
		$(DESTDIR)$(bashcompletiondir)/julia-fcgi \
		$(DESTDIR)$(zshcompletiondir)/_julia-fcgi \
		$(DESTDIR)$(fishcompletiondir)/julia-fcgi.fish
	rm -rf $(DESTDIR)$(pkgdatadir) $(DESTDIR)$(docdir)

# Both packages from one staged install. The binary is stripped in the stage
# only, as dh_strip does (`make install` keeps the symbols, for distributions
# that make their own debug packages).
packages: package-tools
	rm -rf $(STAGE) $(PACKAGES)
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(STAGE)
	strip --remove-section=.comment --remove-section=.note --strip-unneeded \
		$(STAGE)$(sbindir)/julia-fcgi
	@# Debian wants a changelog; this one says which version it is, no more.
	{ printf 'julia-fcgi (%s-%s) unstable; urgency=medium\n\n' '$(VERSION)' '$(PKG_RELEASE)'; \
	  printf '  * julia-fcgi %s, packaged from its source tree by make packages.\n\n' '$(VERSION)'; \
	  printf ' -- %s  %s\n' '$(DEB_MAINTAINER)' "$$(date -R -u -d @$(SOURCE_DATE_EPOCH))"; \
	} > $(DEB_CHANGELOG)
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(CARGO) deb --no-build --locked \
		--deb-revision $(PKG_RELEASE) --output $(PACKAGES)/
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(CARGO) generate-rpm \
		--set-metadata 'release = "$(PKG_RELEASE)"' --output $(PACKAGES)/
	@echo
	@echo "Packages of julia-fcgi $(VERSION):"
	@ls -1 $(CURDIR)/$(PACKAGES)/*.deb $(CURDIR)/$(PACKAGES)/*.rpm

# lintian's and rpmlint's verdicts: no error, and no lintian warning either.
# rpmlint's configuration, each filter with its reason, is
# packaging/rpm/rpmlint.toml.
check-packages: packages
	lintian --fail-on error,warning --display-info $(PACKAGES)/*.deb
	rpmlint --config packaging/rpm/rpmlint.toml $(PACKAGES)/*.rpm

package-tools:
	@$(CARGO) deb --version >/dev/null 2>&1 || \
		$(CARGO) install --locked cargo-deb@$(CARGO_DEB_VERSION)
	@$(CARGO) generate-rpm --version >/dev/null 2>&1 || \
		$(CARGO) install --locked cargo-generate-rpm@$(CARGO_GENERATE_RPM_VERSION)

clean-packages:
	rm -rf $(STAGE) $(PACKAGES) $(DEB_CHANGELOG)

# The pool sysimage for the worker of this tree (julia-fcgi sysimage build
# writes target/sysimage/sysimage.so and its metadata; `sysimage = "auto"`
# finds it there for a binary in target/*/). Minutes: progress is printed.
sysimage: build
	$(BIN) -b $(JULIA) -v julia/worker.jl $(SYSIMAGE_USER) sysimage build $(SYSIMAGE_ARGS)
