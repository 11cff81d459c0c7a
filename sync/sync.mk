# ---- archive and restore with rclone: sync/sync.py; what is sent: sync/filter.txt ------------
# REMOTE names a remote configured in rclone (`rclone config` once, or RCLONE_CONFIG_<NAME>_*
# variables) and a path on it. Credentials stay in rclone's config, never on this command line.
REMOTE ?= atma11:atma11#   rclone remote:path; runs go to REMOTE/runs/<run id>/
RUN ?=#                    run id: sync-down needs one (make sync-list); sync-up: WORK's own, else new

.PHONY: sync-up sync-down sync-list

# A connection string (":s3,secret_access_key=...:" or "name,key=value:") carries credentials:
# refuse it while the recipe is expanded, before Make echoes the command into a log.
sync_comma := ,
sync_bad_remote := REMOTE must name a configured rclone remote and a path (like gdrive:atma11), \
  not a connection string: credentials go in rclone's config or RCLONE_CONFIG_<NAME>_* variables
# REMOTE and RUN are free text (a path may hold a quote, a space): one quoted word each.
sync_remote = $(if $(or $(findstring $(sync_comma),$(REMOTE)),$(filter :%,$(REMOTE))),$(error \
  $(sync_bad_remote)),$(call quoted,$(REMOTE)))

sync-up: | $(VENV_STAMP) ## archive WORK's finished stages (DONE) to REMOTE/runs/<run id>; rerun resumes
	$(PY) sync/sync.py up --work $(WORK) --remote $(sync_remote) --run $(call quoted,$(RUN))

sync-list: | $(VENV_STAMP) ## list the runs archived on REMOTE
	$(PY) sync/sync.py list --remote $(sync_remote)

sync-down: | $(VENV_STAMP) ## restore REMOTE/runs/RUN into WORK; `make all` then skips its stages
	$(PY) sync/sync.py down --work $(WORK) --remote $(sync_remote) --run $(call quoted,$(RUN))
