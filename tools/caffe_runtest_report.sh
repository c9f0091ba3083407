#!/usr/bin/env bash
# Reports a run of Caffe's own gtest suite (the log written by tools/setup.sh --runtest) against the list of
# known failures, and exits 0 only when every failing test is listed there (with its reason).
#
#   tools/caffe_runtest_report.sh GTEST_LOG [KNOWN_FAILURES_FILE]
#
# KNOWN_FAILURES_FILE (default tools/caffe_known_failures.txt): one test a line, "<gtest name> <reason...>";
# the name may be a shell pattern (ConvolutionLayerTest/*.TestGradient); '#' starts a comment.
# Prints gtest's closing lines, then "N tests, F failed (K known, U unexpected)" and each failure with its
# status. Exit: 0 no unexpected failure, 1 unexpected failures, 2 bad usage / unreadable input, 3 the log is of
# a run that did not finish.
set -uo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "caffe_runtest_report: need GTEST_LOG [KNOWN_FAILURES_FILE] (see --help)" >&2; exit 2; }
LOG="$1"
KNOWN="${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/caffe_known_failures.txt}"
[ -r "$LOG" ] || { echo "caffe_runtest_report: cannot read gtest log '$LOG'" >&2; exit 2; }
[ -r "$KNOWN" ] || { echo "caffe_runtest_report: cannot read known-failures file '$KNOWN'" >&2; exit 2; }

ran_line="$(grep -E '^\[==========\] [0-9]+ tests? from .* ran' "$LOG" | tail -1)"
if [ -z "$ran_line" ]; then
  echo "caffe_runtest_report: '$LOG' has no gtest summary: the run did not finish" >&2
  exit 3
fi
total="$(sed -E 's/^\[==========\] ([0-9]+) tests?.*/\1/' <<<"$ran_line")"

# gtest's closing lines: from the "N tests ... ran" line to the end
echo "gtest's closing lines:"
sed -n '/^\[==========\] [0-9]* tests\{0,1\} from .* ran/,$p' "$LOG" | sed 's/^/  /'

# failed test names, from the per-test result lines "[  FAILED  ] Suite/0.Name[, where ...] (N ms)"
mapfile -t failed < <(grep -E '^\[  FAILED  \] [^ ]+.*\([0-9]+ ms\)$' "$LOG" \
  | sed -E 's/^\[  FAILED  \] ([^ ,]+).*/\1/' | sort -u)

# known failures: name/pattern and reason
names=(); reasons=()
while IFS= read -r line || [ -n "$line" ]; do
  line="${line%%#*}"
  read -r name reason <<<"$line"
  [ -n "${name:-}" ] || continue
  [ -n "${reason:-}" ] || { echo "caffe_runtest_report: '$KNOWN': entry '$name' gives no reason" >&2; exit 2; }
  names+=("$name"); reasons+=("$reason")
done <"$KNOWN"

known=0; unexpected=0; used=()
for t in "${failed[@]}"; do
  hit=-1
  for i in "${!names[@]}"; do
    # shellcheck disable=SC2053
    if [[ "$t" == ${names[$i]} ]]; then hit=$i; break; fi
  done
  if [ "$hit" -ge 0 ]; then
    known=$((known + 1)); used[$hit]=1
    echo "  known failure: $t -- ${reasons[$hit]}"
  else
    unexpected=$((unexpected + 1))
    echo "  UNEXPECTED failure: $t"
  fi
done
for i in "${!names[@]}"; do
  [ -n "${used[$i]:-}" ] || echo "  note: listed as a known failure but did not fail in this run: ${names[$i]}"
done
nfail=${#failed[@]}
echo "Caffe test suite: $total tests, $nfail failed ($known known, $unexpected unexpected); known failures from $KNOWN"
[ "$unexpected" = 0 ]
