"Shared pytest setup."
import os, tempfile

# Every test run gets its own reference log-prob cache (DPOConfig.ref_cache), so runs never read each other's files
# and nothing is written to the user's ~/.cache. Set before any test builds a trainer; notebooks run in-process inherit it.
os.environ["DPO_NB_CACHE"] = tempfile.mkdtemp(prefix="dpo_nb_test_cache-")
