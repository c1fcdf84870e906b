"""A pystorm bolt for the multilang tests: emits its input word in upper case.

Run as ``python upper.py [json|msgpack]``. What else it does comes from the topology's
config, which the handshake hands it:

- ``test.print``: write a line straight to stdout (fd 1, past pystorm's redirection of
  ``sys.stdout``) before each emit, as a C library or a stray ``print`` would.
- ``test.hang_file``: on the word ``hang``, if that file does not exist, create it and
  stop answering (sleep), once.
- ``test.exit_on``: exit with code 3 on that word.
- ``test.sleep``: seconds to sleep on each tuple.
- ``test.raise_file``: on the word ``boom``, if that file does not exist, create it and
  raise (pystorm reports the error, fails the tuple and exits), once.
"""

import os
import sys
import time

from pystorm import Bolt


class Upper(Bolt):
    def initialize(self, conf, context):
        self.print = conf.get("test.print", False)
        self.hang_file = conf.get("test.hang_file")
        self.exit_on = conf.get("test.exit_on")
        self.sleep = conf.get("test.sleep", 0)
        self.raise_file = conf.get("test.raise_file")
        self.logger.info("upper ready in task %s", context["taskid"])

    def process(self, tup):
        word = tup.values[0]
        if self.print:
            os.write(1, f"not protocol: {word}\n".encode())
        if word == "hang" and self.hang_file and not os.path.exists(self.hang_file):
            open(self.hang_file, "w").close()
            time.sleep(3600)
        if word == "boom" and self.raise_file and not os.path.exists(self.raise_file):
            open(self.raise_file, "w").close()
            raise ValueError("boom at the first try")
        if self.sleep:
            time.sleep(self.sleep)
        if word == self.exit_on:
            os._exit(3)
        self.emit([word.upper()])


if __name__ == "__main__":
    Upper(serializer=sys.argv[1] if len(sys.argv) > 1 else "json").run()
