"""The bottom layer, which every other part of nriqa may use and which uses none of them: errors
and exit codes, the stage helpers, the typed settings, the process set-up, image decoding and the
crop grid, the TID2013 type taxonomy, and the metrics."""
