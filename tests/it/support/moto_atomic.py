"""moto_server, with S3's conditional writes decided atomically.

moto checks a PUT's or DELETE's If-Match / If-None-Match and then writes, in one of werkzeug's
request threads, holding nothing between the two. Two writers with the same precondition can
then both succeed: 1 or 2 rounds in 240 with 8 racing writers on a loaded machine. S3 itself (and
Azurite) decide a conditional write atomically, which is what archway's leases rely on. (This
was first blamed for a blob fetched three times in the cluster tests; that was archway
releasing a taken-over lease before its commit, since fixed.)
This runs moto's own server with every request that carries a precondition serialised, so moto
decides them as S3 does; everything else is moto as shipped.

    python3 moto_atomic.py -H 127.0.0.1 -p 0     # the arguments of moto_server
"""

import functools
import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_decided = threading.Lock()


def _atomic(handler):
    @functools.wraps(handler)
    def wrapped(self, *args, **kwargs):
        if self.headers.get("If-Match") or self.headers.get("If-None-Match"):
            with _decided:
                return handler(self, *args, **kwargs)
        return handler(self, *args, **kwargs)

    return wrapped


for _name in ("put_object", "delete_object"):
    setattr(S3Response, _name, _atomic(getattr(S3Response, _name)))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
