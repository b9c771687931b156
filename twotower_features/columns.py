"""Column names of the input contract and of every table the stages write.

One module, so that a rename happens in one place and error messages can name columns exactly.
"""
from __future__ import annotations

# input tables (folders under --input)
INTERACTIONS = "interactions"
ITEMS = "items"
USERS = "users"

# interactions (input contract)
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TS = "event_ts"
TIME_SPENT = "time_spent"
FRACTION_WATCHED = "fraction_watched"
LIKED = "liked"
SHARED = "shared"
DT = "dt"

INTERACTION_COLUMNS = (USER_ID, ITEM_ID, EVENT_TS, TIME_SPENT, FRACTION_WATCHED, LIKED, SHARED, DT)
# per-event measurements: almost every value differs, so Parquet's dictionary encoding of them
# only costs write time before it falls back to plain pages (``io.write_delta(plain=...)``)
PLAIN_ENCODED = (EVENT_TS, TIME_SPENT, FRACTION_WATCHED)

# items
CREATOR_ID = "creator_id"
DURATION_S = "duration_s"
DEDUP_EMBEDDING = "dedup_embedding"
SIMCLR_EMBEDDING = "simclr_embedding"
ITEM_PERFORMANCE_PREFIX = "item_performance_"
CREATOR_PERFORMANCE_PREFIX = "creator_performance_"
EMBEDDING_COLUMNS = {"dedup": DEDUP_EMBEDDING, "simclr": SIMCLR_EMBEDDING}

# users
HANDSET_MAKER = "handset_maker"
ACTIVITY_PROFILE = "activity_profile"

# statistics tables ("recsys database"), keyed by id and dt: table name -> key column
STATS_TABLES = {"user_stats": USER_ID, "item_stats": ITEM_ID, "creator_stats": CREATOR_ID}
INPUT_TABLES = (INTERACTIONS, ITEMS, USERS, *STATS_TABLES)
STAT_CTR = "ctr"
STAT_TIMESPENT = "timespent"

# generator ground truth
TRUE_PROB = "true_engagement_prob"

# derived columns
LABEL = "label"
WEIGHT = "weight"
SPLIT = "split"
TRAIN = "train"
VALIDATION = "validation"
ITEM_EMB = "item_emb"
ITEM_CLUSTER = "item_cluster"
POS_HISTORY = "pos_history"  # the id lists of history.keep_lists
NEG_HISTORY = "neg_history"
ITEM_AVG_TIME_SPENT = "item_avg_time_spent"
QUARANTINE_REASON = "reason"
