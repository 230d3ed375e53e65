// Replay a scripted byte stream through rc::Controller, for the Python differential test.
//
// stdin, one step per line: "<now_ms> <bytes as hex, or ->". For each step the controller is polled
// at now_ms, then fed the bytes at now_ms. stdout, one line per step:
// "<now_ms> <replies of the poll and the feed, as hex, or -> <outputs mask>".
#include <stdio.h>
#include <string.h>

#include <string>

#include "../scratchpilot_rc/rc_protocol.h"

static std::string hex(const std::string &bytes) {
  static const char DIGITS[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += DIGITS[c >> 4];
    out += DIGITS[c & 15];
  }
  return out.empty() ? "-" : out;
}

int main() {
  rc::Controller controller;
  controller.begin(0);
  printf("0 %s %u\n", hex(std::string(controller.reply(), controller.reply_length())).c_str(),
         controller.outputs());
  static char line[1 << 16];
  while (fgets(line, sizeof(line), stdin)) {
    unsigned long now_ms = 0;
    char data[sizeof(line)];
    if (sscanf(line, "%lu %65535s", &now_ms, data) != 2) {
      fprintf(stderr, "rc_replay: bad input line: %s", line);
      return 2;
    }
    std::string replies;
    const uint32_t now = static_cast<uint32_t>(now_ms);
    if (controller.poll(now)) replies.append(controller.reply(), controller.reply_length());
    if (strcmp(data, "-") != 0) {
      for (size_t i = 0; data[i] && data[i + 1]; i += 2) {
        unsigned int byte = 0;
        sscanf(data + i, "%2x", &byte);
        if (controller.feed(static_cast<uint8_t>(byte), now)) {
          replies.append(controller.reply(), controller.reply_length());
        }
      }
    }
    printf("%lu %s %u\n", now_ms, hex(replies).c_str(), controller.outputs());
  }
  return 0;
}
