"""gcp-storage-emulator, with its on-disk index written the way a real store keeps its
state: atomically. The emulator rewrites one `.meta` JSON in place on every upload, so a
store stopped mid-test (tests/emulators.RestartableGCS) could come back with half a file
and refuse to start. Here `.meta` goes to a temp file renamed over it.

  python -m tests.gcs_emulator start --host 127.0.0.1 --port N
"""

import json
import os
import sys
import threading

from gcp_storage_emulator import storage
from gcp_storage_emulator.__main__ import main


def _write_config_atomically(self):
  data = {'buckets': self.buckets, 'objects': self.objects, 'resumable': self.resumable,
          'bucket_iam_policies': self.bucket_iam_policies,
          'soft_deleted': self.soft_deleted}
  if self._use_memory_fs:  # pylint: disable=protected-access
    self._store.write_bytes('.meta', json.dumps(data).encode('utf-8'))  # pylint: disable=protected-access
    return
  target = self._store._disk_path('.meta')  # pylint: disable=protected-access
  temp = f'{target}.{os.getpid()}-{threading.get_ident()}.tmp'
  with open(temp, 'wb') as f:
    f.write(json.dumps(data, indent=2).encode('utf-8'))
  os.replace(temp, target)


storage.Storage._write_config_to_file = _write_config_atomically  # pylint: disable=protected-access

if __name__ == '__main__':
  sys.argv[0] = 'gcp-storage-emulator'
  sys.exit(main())
