# Sourced by the scripts: sets `target_dir` to where cargo puts this workspace's builds (target/,
# or wherever CARGO_TARGET_DIR or a cargo configuration says), as cargo itself reports it.
target_dir=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null \
  | grep -o '"target_directory":"[^"]*"' | head -n 1 | cut -d '"' -f 4)
if [ -z "$target_dir" ]; then
  echo "cannot find cargo's target directory (cargo metadata failed)" >&2
  exit 1
fi
