"""Stage 07: the validated submission and the report a user opens first after a run.

Reads DATA/test.csv (and the sample submission when present), stage 06's directory, and for the
report stages 03's and 04's and every stage's provenance.json. Writes WORK/07_submit/:
  submission.csv    one column `target`, one row per test.csv row, in test.csv order
  report.md         what ran, how long, how well; with the pictures below beside it
  jigsaw_loss.png, cv_<task>.png, importance.png, confusion.png, provenance.json, DONE

    python 07_submit.py --data DATA --stack work/06_stack --finetune work/04_finetune \
        --jigsaw work/03_jigsaw --timed work/00_validate work/01_sgkfold ... --out work/07_submit

The submission is checked before it is written (06's test.csv: every test id once and no other
id; every value finite and within [0, 3], the sample submission's columns and length when there
is one): a malformed result is an error, never a file.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common
import rawdata
import reporting

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--data", required=True, help="raw-data directory (test.csv, sample submission)")
p.add_argument("--stack", required=True, help="stage 06's directory: the submission, its CV")
p.add_argument("--finetune", required=True, help="stage 04's directory: the runs' per-epoch RMSE")
p.add_argument("--jigsaw", required=True, help="stage 03's directory: its loss plot, the profile")
p.add_argument("--timed", nargs="*", default=[], help="stage directories whose provenance.json "
               "(and their runs') the report's minutes come from")
p.add_argument("--out", required=True, help="this stage's directory")


def submission(data, stack_dir):
    test = rawdata.load_test(data)
    pred = pd.read_csv(Path(stack_dir) / "test.csv", dtype={"object_id": str}).set_index("object_id")["final"]
    # one prediction per test.csv id, and none for another id: named, before any is written
    common.check_ids(pred.index, Path(stack_dir) / "test.csv", stack_dir, expected=test["object_id"])
    values = pred.loc[test["object_id"]].to_numpy(dtype=float)
    bad = test.loc[~np.isfinite(values) | (values < 0) | (values > 3), "object_id"]
    if len(bad):
        raise common.DataError(f"{stack_dir}/test.csv: predictions not finite or outside [0, 3] for {common.show_ids(bad)}")
    sub = pd.DataFrame({"target": values})
    for name in rawdata.SAMPLE_SUBMISSIONS:
        sample = Path(data) / name
        if sample.exists():
            ref = rawdata.read_raw_csv(sample)
            if list(ref.columns) != list(sub.columns) or len(ref) != len(sub):
                raise common.DataError(f"{sample}: the submission has {list(sub.columns)} x {len(sub)}, "
                                       f"the sample {list(ref.columns)} x {len(ref)}")
    return sub


def main():
    args = common.parse(p, "07")
    stage = common.Stage(args.out)
    out = stage.dir
    try:
        sub = submission(args.data, args.stack)
    except common.DataError as e:
        common.fail(str(e))
    common.write_csv(out / "submission.csv", sub, float_format="%.6f")
    reporting.write_report(out, sub, data=args.data, jigsaw=args.jigsaw, finetune=args.finetune,
                           stack=args.stack, timed=args.timed)
    stage.finish(vars(args))
    print(f"[07] {out / 'submission.csv'}: {len(sub)} rows; report {out / 'report.md'} "
          f"[{time.time() - stage.started:.1f}s]", flush=True)


if __name__ == "__main__":
    main()
