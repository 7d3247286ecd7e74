# Sourced by scripts/web/deploy-tools-test and scripts/web/fleet-test (needs $REPO).
# install_switchfs_gem DIR: builds dist/capistrano-switchfs with `gem build` and installs the
# built file with `gem install --local` into DIR, as a user installs a gem they were sent;
# sets CAP_GEM_PATH (DIR, then the system's gem path) for `cap` to find it with Debian's
# capistrano. Output in DIR.log; returns non-zero when either step fails.
install_switchfs_gem() {
  local dir=$1 src
  src=$(mktemp -d "$dir.src.XXXXXX") || return 1
  cp -r "$REPO/dist/capistrano-switchfs/." "$src/" &&
    (cd "$src" && gem build capistrano-switchfs.gemspec -o "$dir.gem") >"$dir.log" 2>&1 &&
    GEM_HOME=$dir GEM_PATH="$dir:$(gem env gempath)" \
      gem install --local --no-document "$dir.gem" >>"$dir.log" 2>&1 || {
    tail -n 5 "$dir.log" >&2
    rm -rf "$src"
    return 1
  }
  rm -rf "$src"
  CAP_GEM_PATH="$dir:$(gem env gempath)"
}
