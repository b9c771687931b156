"""TFRecord files of ``tf.train.Example`` protos, written from Spark without TensorFlow.

Three modules, import them by name (this file re-exports nothing); ``writer`` imports the other
two, ``framing`` imports ``encode`` for its record type:

- ``encode``: ``encode_batch`` serialises one ``tf.train.Example`` per row of a pyarrow batch,
  vectorised with numpy (``EncodedRecords``, ``TFRecordError``, ``check_columns_present``).
- ``framing``: ``frame_records`` frames serialised records as a TFRecord file body (lengths and
  masked crc32c checksums, ``masked_crc32c``).
- ``writer``: ``write_tfrecords`` writes a Spark DataFrame as sharded TFRecord files through
  ``mapInArrow`` and publishes them atomically (``shard_name``, ``SUCCESS_FILE``).

None of them imports TensorFlow: the Spark side must not need it.
"""
