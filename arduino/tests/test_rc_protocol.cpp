// Host unit tests for rc_protocol.h: the parser, the replies and the 250 ms failsafe.
// Build and run: make -C arduino host-test (g++, sanitizers on). Exit status 0 when all pass.

#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <string>

#include "../scratchpilot_rc/rc_protocol.h"

static int checks = 0;
static int failures = 0;

#define CHECK(condition)                                                     \
  do {                                                                       \
    ++checks;                                                                \
    if (!(condition)) {                                                      \
      ++failures;                                                            \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #condition); \
    }                                                                        \
  } while (0)

#define CHECK_EQ_STR(actual, expected)                                                            \
  do {                                                                                            \
    ++checks;                                                                                     \
    std::string actual_value(actual), expected_value(expected);                                   \
    if (actual_value != expected_value) {                                                         \
      ++failures;                                                                                 \
      fprintf(stderr, "%s:%d: expected \"%s\", got \"%s\"\n", __FILE__, __LINE__,                \
              escape(expected_value).c_str(), escape(actual_value).c_str());                      \
    }                                                                                             \
  } while (0)

static std::string escape(const std::string &text) {
  std::string out;
  for (char c : text) {
    if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7E) {
      char hex[8];
      snprintf(hex, sizeof(hex), "\\x%02X", static_cast<unsigned char>(c));
      out += hex;
    } else {
      out += c;
    }
  }
  return out;
}

// "<body>*<crc>\n", the way the host encodes a command.
static std::string framed(const std::string &body) {
  char crc[3];
  snprintf(crc, sizeof(crc), "%02X", rc::crc8(body.data(), body.size()));
  return body + "*" + crc + "\n";
}

// Feed bytes at one instant; return every reply produced, concatenated.
static std::string feed(rc::Controller &controller, const std::string &bytes, uint32_t now_ms) {
  std::string replies;
  for (char c : bytes) {
    if (controller.feed(static_cast<uint8_t>(c), now_ms)) {
      replies.append(controller.reply(), controller.reply_length());
    }
  }
  return replies;
}

static rc::Controller booted(uint32_t now_ms = 0) {
  rc::Controller controller;
  controller.begin(now_ms);
  return controller;
}

static void test_crc8_known_values() {
  CHECK(rc::crc8("123456789", 9) == 0xF4);  // the CRC-8/SMBUS check value
  CHECK(rc::crc8("", 0) == 0x00);
  CHECK(rc::crc8("D F 1", 5) != rc::crc8("D F 2", 5));
  CHECK(rc::crc8("D FL 12", 7) != rc::crc8("D LF 12", 7));  // swapped characters are caught
}

static void test_boot_line() {
  rc::Controller controller = booted();
  CHECK_EQ_STR(std::string(controller.reply(), controller.reply_length()), framed("E BOOT 1"));
  CHECK(controller.outputs() == 0);
  CHECK(!controller.session_active());
}

static void test_good_drive_commands() {
  rc::Controller controller = booted();
  CHECK_EQ_STR(feed(controller, framed("D F 1"), 10), framed("A 1 F"));
  CHECK(controller.outputs() == rc::OUT_FORWARD);
  CHECK(controller.session_active());
  CHECK_EQ_STR(feed(controller, framed("D FL 2"), 20), framed("A 2 FL"));
  CHECK(controller.outputs() == (rc::OUT_FORWARD | rc::OUT_LEFT));
  CHECK_EQ_STR(feed(controller, framed("D BR 3"), 30), framed("A 3 BR"));
  CHECK(controller.outputs() == (rc::OUT_REVERSE | rc::OUT_RIGHT));
  CHECK_EQ_STR(feed(controller, framed("D R 4"), 40), framed("A 4 R"));
  CHECK(controller.outputs() == rc::OUT_RIGHT);
  CHECK_EQ_STR(feed(controller, framed("D - 5"), 50), framed("A 5 -"));
  CHECK(controller.outputs() == 0);
  CHECK(controller.session_active());  // released but still fed: no failsafe event pending
}

static void test_crlf_and_lowercase_hex_accepted() {
  rc::Controller controller = booted();
  std::string line = framed("D B 7");
  line.insert(line.size() - 1, "\r");
  CHECK_EQ_STR(feed(controller, line, 0), framed("A 7 B"));
  char lower[32];
  snprintf(lower, sizeof(lower), "D L 8*%02x\n", rc::crc8("D L 8", 5));
  CHECK_EQ_STR(feed(controller, lower, 0), framed("A 8 L"));
  CHECK(controller.outputs() == rc::OUT_LEFT);
}

static void test_bad_checksum_rejected_and_outputs_kept() {
  rc::Controller controller = booted();
  feed(controller, framed("D F 1"), 0);
  std::string damaged = framed("D B 2");
  damaged[2] = 'F';  // one character changed in transit
  CHECK_EQ_STR(feed(controller, damaged, 10), framed("N - CRC"));
  CHECK(controller.outputs() == rc::OUT_FORWARD);
  CHECK_EQ_STR(feed(controller, "D F 3*ZZ\n", 20), framed("N - SYNTAX"));
  CHECK_EQ_STR(feed(controller, "D F 3*4\n", 20), framed("N - SYNTAX"));
  CHECK_EQ_STR(feed(controller, "D F 3\n", 20), framed("N - SYNTAX"));
  // Bad lines do not feed the failsafe: it trips 250 ms after the last *valid* command.
  CHECK(!controller.poll(249));
  CHECK(controller.poll(250));
  CHECK(controller.outputs() == 0);
}

static void test_garbage_and_syntax_errors() {
  rc::Controller controller = booted();
  const char *bad_bodies[] = {
      "D FB 1",    // forward and reverse together
      "D LR 1",    // left and right together
      "D RF 1",    // steering before throttle is not canonical
      "D X 1",     // unknown output
      "D  F 1",    // empty field
      "D F",       // missing sequence
      "D F 65536", // sequence out of range
      "D F 123456",
      "D F -1",
      "D F 1 2",   // too many fields
      "DD F 1",    // command must be one letter
      "Q 1",       // unknown command
      "P",         // ping without a sequence
      "P F 1",     // ping takes no outputs
  };
  for (const char *body : bad_bodies) {
    std::string reply = feed(controller, framed(body), 0);
    CHECK(reply.compare(0, 2, "N ") == 0);
    if (reply.compare(0, 2, "N ") != 0) fprintf(stderr, "  body was \"%s\", reply \"%s\"\n", body, escape(reply).c_str());
  }
  CHECK_EQ_STR(feed(controller, framed("Q 9"), 0), framed("N 9 SYNTAX"));  // seq echoed when readable
  CHECK(controller.outputs() == 0);
  CHECK(!controller.session_active());

  // Binary noise, NUL bytes and a line of only '\r' never produce a valid command.
  std::string noise;
  for (int i = 0; i < 31; ++i) noise += static_cast<char>((i * 37 + 11) & 0xFF);
  noise.erase(std::remove(noise.begin(), noise.end(), '\n'), noise.end());
  std::string reply = feed(controller, noise + "\n", 0);
  CHECK(reply.compare(0, 2, "N ") == 0);
  CHECK_EQ_STR(feed(controller, std::string("\0\0\n", 3), 0), framed("N - SYNTAX"));
  CHECK_EQ_STR(feed(controller, "\r\n", 0), "");  // empty lines are ignored: a host may resync with '\n'
  CHECK_EQ_STR(feed(controller, "\n", 0), "");
  CHECK(controller.outputs() == 0);

  // After the noise a good command works at once.
  CHECK_EQ_STR(feed(controller, framed("D F 1"), 0), framed("A 1 F"));
}

static void test_overlong_lines() {
  rc::Controller controller = booted();
  feed(controller, framed("D F 1"), 0);
  std::string longest(rc::MAX_LINE, 'x');
  CHECK_EQ_STR(feed(controller, longest + "\n", 1), framed("N - SYNTAX"));  // exactly MAX_LINE: parsed
  CHECK_EQ_STR(feed(controller, longest + "y\n", 2), framed("N - LONG"));
  CHECK_EQ_STR(feed(controller, std::string(5000, 'z') + "\n", 3), framed("N - LONG"));
  // A valid command hidden at the end of an overlong line is discarded with the rest of it.
  CHECK_EQ_STR(feed(controller, std::string(40, ' ') + framed("D B 2"), 4), framed("N - LONG"));
  CHECK(controller.outputs() == rc::OUT_FORWARD);
  // The next line is parsed normally again.
  CHECK_EQ_STR(feed(controller, framed("D B 3"), 5), framed("A 3 B"));
}

static void test_sequence_handling() {
  rc::Controller controller = booted();
  CHECK_EQ_STR(feed(controller, framed("D F 40000"), 0), framed("A 40000 F"));  // any start is fine
  CHECK_EQ_STR(feed(controller, framed("D L 40000"), 10), framed("N 40000 SEQ"));  // duplicate
  CHECK(controller.outputs() == rc::OUT_FORWARD);
  CHECK_EQ_STR(feed(controller, framed("D L 39999"), 20), framed("N 39999 SEQ"));  // stale
  CHECK_EQ_STR(feed(controller, framed("D L 40005"), 30), framed("A 40005 L"));
  CHECK(controller.outputs() == rc::OUT_LEFT);
  // A rejected (stale) command does not feed the failsafe.
  CHECK_EQ_STR(feed(controller, framed("D L 40001"), 200), framed("N 40001 SEQ"));
  CHECK(controller.poll(280));
  CHECK(controller.outputs() == 0);

  // Wraparound of the 16-bit sequence: 65535 -> 0 is newer.
  rc::Controller wrapping = booted();
  CHECK_EQ_STR(feed(wrapping, framed("D F 65535"), 0), framed("A 65535 F"));
  CHECK_EQ_STR(feed(wrapping, framed("D R 0"), 10), framed("A 0 R"));
  CHECK_EQ_STR(feed(wrapping, framed("D L 65534"), 20), framed("N 65534 SEQ"));
  CHECK(rc::sequence_newer(1, 65535));
  CHECK(rc::sequence_newer(32767, 0));
  CHECK(!rc::sequence_newer(32768, 0));
  CHECK(!rc::sequence_newer(7, 7));

  // A ping answers with the state, takes no part in the sequence order, and does not feed the failsafe.
  rc::Controller pinged = booted();
  CHECK_EQ_STR(feed(pinged, framed("P 3"), 0), framed("A 3 -"));
  CHECK(!pinged.session_active());
  CHECK_EQ_STR(feed(pinged, framed("D F 10"), 0), framed("A 10 F"));
  CHECK_EQ_STR(feed(pinged, framed("P 2"), 100), framed("A 2 F"));
  CHECK_EQ_STR(feed(pinged, framed("P 2"), 200), framed("A 2 F"));
  CHECK(pinged.poll(250));
  CHECK(pinged.outputs() == 0);
}

static void test_failsafe_at_250_ms() {
  rc::Controller controller = booted(1000);
  CHECK(!controller.poll(5000));  // no session yet: nothing to release, no event
  feed(controller, framed("D FL 1"), 5000);
  CHECK(!controller.poll(5000));
  CHECK(!controller.poll(5249));
  CHECK(controller.outputs() == (rc::OUT_FORWARD | rc::OUT_LEFT));
  CHECK(controller.poll(5250));
  CHECK_EQ_STR(std::string(controller.reply(), controller.reply_length()), framed("E FAILSAFE"));
  CHECK(controller.outputs() == 0);
  CHECK(!controller.session_active());
  CHECK(!controller.poll(5251));  // the event is sent once
  CHECK(!controller.poll(90000));

  // Commands every 200 ms keep it alive indefinitely.
  uint32_t now = 100000;
  for (uint16_t seq = 1; seq <= 50; ++seq, now += 200) {
    feed(controller, framed("D F " + std::to_string(seq)), now);
    CHECK(!controller.poll(now + 199));
  }
  CHECK(controller.outputs() == rc::OUT_FORWARD);

  // After the failsafe a new session may start from any sequence number, even an old one.
  rc::Controller restarted = booted();
  feed(restarted, framed("D F 500"), 0);
  CHECK(restarted.poll(300));
  CHECK_EQ_STR(feed(restarted, framed("D F 2"), 310), framed("A 2 F"));
  CHECK(restarted.outputs() == rc::OUT_FORWARD);
}

static void test_failsafe_due_when_command_arrives_late() {
  // The loop was busy and never polled: the command that arrives after 300 ms first reports the
  // failsafe, then starts a new session (its sequence is accepted even though it is "stale").
  rc::Controller controller = booted();
  feed(controller, framed("D F 100"), 0);
  CHECK_EQ_STR(feed(controller, framed("D R 50"), 300), framed("E FAILSAFE") + framed("A 50 R"));
  CHECK(controller.outputs() == rc::OUT_RIGHT);
}

static void test_millis_wraparound() {
  const uint32_t near_wrap = 0xFFFFFFFFu - 100u;  // millis() wraps after 49.7 days
  rc::Controller controller = booted(near_wrap);
  feed(controller, framed("D F 1"), near_wrap);
  CHECK(!controller.poll(near_wrap + 100u));   // == 0xFFFFFFFF
  CHECK(!controller.poll(0u));                 // wrapped: 101 ms elapsed
  CHECK(!controller.poll(148u));               // 249 ms elapsed
  CHECK(controller.outputs() == rc::OUT_FORWARD);
  CHECK(controller.poll(149u));                // 250 ms elapsed
  CHECK(controller.outputs() == 0);

  // A command just before the wrap keeps the session alive just after it.
  rc::Controller alive = booted(near_wrap);
  feed(alive, framed("D F 1"), 0xFFFFFFF0u);
  feed(alive, framed("D F 2"), 0x00000010u);
  CHECK(!alive.poll(0x00000010u + 249u));
  CHECK(alive.poll(0x00000010u + 250u));
}

static void test_reset_while_line_half_received() {
  rc::Controller controller = booted();
  std::string line = framed("D F 1");
  feed(controller, line.substr(0, 3), 0);
  controller.begin(10);  // a reboot (or an explicit re-begin) discards the half line
  CHECK_EQ_STR(feed(controller, line.substr(3), 10), framed("N - CRC"));
  CHECK(controller.outputs() == 0);
}

int main() {
  test_crc8_known_values();
  test_boot_line();
  test_good_drive_commands();
  test_crlf_and_lowercase_hex_accepted();
  test_bad_checksum_rejected_and_outputs_kept();
  test_garbage_and_syntax_errors();
  test_overlong_lines();
  test_sequence_handling();
  test_failsafe_at_250_ms();
  test_failsafe_due_when_command_arrives_late();
  test_millis_wraparound();
  test_reset_while_line_half_received();
  if (failures) {
    fprintf(stderr, "rc_protocol: %d of %d checks FAILED\n", failures, checks);
    return 1;
  }
  printf("rc_protocol: all %d checks passed\n", checks);
  return 0;
}
