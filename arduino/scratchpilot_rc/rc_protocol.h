// rc_protocol.h -- the RC car's serial line protocol and failsafe, free of Arduino headers.
//
// The sketch (scratchpilot_rc.ino) feeds received bytes and the current millis() into an
// rc::Controller and drives its pins from Controller::outputs(); the host test
// (arduino/tests/test_rc_protocol.cpp) feeds the same class scripted bytes and fake clocks.
// The protocol is specified in arduino/README.md; tests/fake_arduino.py mirrors it
// byte for byte (a differential test runs both on the same input).
//
// Written for the avr-gcc 5.4 / C++11 subset: no STL, no exceptions, no heap, no stdio.
#ifndef SCRATCHPILOT_RC_PROTOCOL_H
#define SCRATCHPILOT_RC_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

namespace rc {

const uint8_t PROTOCOL_VERSION = 1;
// All outputs are released when no valid drive command has arrived for this long.
const uint32_t FAILSAFE_MS = 250;
// Longest command line accepted, not counting the '\n' (a real command is at most 13 characters).
const size_t MAX_LINE = 32;
// Room for two replies: a failsafe event that fell due just before a command, then its answer.
const size_t MAX_REPLY = 48;

// Output bits. FORWARD/REVERSE and LEFT/RIGHT are mutually exclusive: the parser refuses both.
const uint8_t OUT_FORWARD = 1;
const uint8_t OUT_REVERSE = 2;
const uint8_t OUT_LEFT = 4;
const uint8_t OUT_RIGHT = 8;

// CRC-8 with polynomial 0x07, initial value 0, no reflection, no final xor ("CRC-8/SMBUS");
// crc8("123456789") == 0xF4. Unlike an XOR checksum it catches swapped and doubled characters.
inline uint8_t crc8_update(uint8_t crc, uint8_t value) {
  crc ^= value;
  for (uint8_t bit = 0; bit < 8; ++bit) {
    crc = (crc & 0x80) ? static_cast<uint8_t>((crc << 1) ^ 0x07) : static_cast<uint8_t>(crc << 1);
  }
  return crc;
}

inline uint8_t crc8(const char *data, size_t length) {
  uint8_t crc = 0;
  for (size_t i = 0; i < length; ++i) crc = crc8_update(crc, static_cast<uint8_t>(data[i]));
  return crc;
}

// Parse an outputs field: "-" (all released) or an optional throttle letter F|B followed by an
// optional steering letter L|R ("F", "B", "L", "R", "FL", "FR", "BL", "BR").
inline bool parse_outputs(const char *text, size_t length, uint8_t *mask) {
  if (length == 1 && text[0] == '-') {
    *mask = 0;
    return true;
  }
  if (length == 0 || length > 2) return false;
  uint8_t result = 0;
  size_t i = 0;
  if (text[i] == 'F') {
    result |= OUT_FORWARD;
    ++i;
  } else if (text[i] == 'B') {
    result |= OUT_REVERSE;
    ++i;
  }
  if (i < length) {
    if (text[i] == 'L') {
      result |= OUT_LEFT;
    } else if (text[i] == 'R') {
      result |= OUT_RIGHT;
    } else {
      return false;
    }
    ++i;
  }
  if (i != length) return false;
  *mask = result;
  return true;
}

// Write the canonical outputs field for mask into out (at least 3 bytes); return its length.
inline size_t format_outputs(uint8_t mask, char *out) {
  size_t n = 0;
  if (mask & OUT_FORWARD) out[n++] = 'F';
  if (mask & OUT_REVERSE) out[n++] = 'B';
  if (mask & OUT_LEFT) out[n++] = 'L';
  if (mask & OUT_RIGHT) out[n++] = 'R';
  if (n == 0) out[n++] = '-';
  out[n] = '\0';
  return n;
}

// Parse a sequence number: 1 to 5 decimal digits, at most 65535.
inline bool parse_sequence(const char *text, size_t length, uint16_t *sequence) {
  if (length == 0 || length > 5) return false;
  uint32_t value = 0;
  for (size_t i = 0; i < length; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    value = value * 10 + static_cast<uint32_t>(text[i] - '0');
  }
  if (value > 0xFFFFu) return false;
  *sequence = static_cast<uint16_t>(value);
  return true;
}

// True when a is newer than b in 16-bit serial-number arithmetic (RFC 1982): 1..32767 steps ahead.
inline bool sequence_newer(uint16_t a, uint16_t b) {
  uint16_t ahead = static_cast<uint16_t>(a - b);
  return ahead != 0 && ahead < 0x8000u;
}

inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

class Controller {
 public:
  Controller()
      : line_length_(0), overflow_(false), outputs_(0), session_(false), last_sequence_(0),
        last_command_ms_(0), reply_length_(0) {
    line_[0] = '\0';
    reply_[0] = '\0';
  }

  // Start (or restart) with everything released; reply() then holds the boot line "E BOOT 1".
  void begin(uint32_t now_ms) {
    (void)now_ms;
    line_length_ = 0;
    overflow_ = false;
    outputs_ = 0;
    session_ = false;
    reply_length_ = 0;
    const char boot[] = {'E', ' ', 'B', 'O', 'O', 'T', ' ', static_cast<char>('0' + PROTOCOL_VERSION)};
    append_line(boot, sizeof(boot));
  }

  // Feed one received byte. Returns true when it completed a line that has an answer in reply().
  bool feed(uint8_t received, uint32_t now_ms) {
    if (received == '\n') {
      reply_length_ = 0;
      expire_if_due(now_ms);
      if (overflow_) {
        nack(false, 0, "LONG");
      } else {
        size_t length = line_length_;
        if (length > 0 && line_[length - 1] == '\r') --length;  // tolerate CRLF from terminals
        if (length > 0) handle_line(length, now_ms);
      }
      line_length_ = 0;
      overflow_ = false;
      return reply_length_ > 0;
    }
    if (overflow_) return false;
    if (line_length_ == MAX_LINE) {
      overflow_ = true;  // drop the rest of this line; answer once its '\n' arrives
      return false;
    }
    line_[line_length_++] = static_cast<char>(received);
    return false;
  }

  // Run the failsafe. Returns true when it just released the outputs ("E FAILSAFE" in reply()).
  bool poll(uint32_t now_ms) {
    reply_length_ = 0;
    expire_if_due(now_ms);
    return reply_length_ > 0;
  }

  uint8_t outputs() const { return outputs_; }
  // True between a valid drive command and the failsafe (or a reboot).
  bool session_active() const { return session_; }
  const char *reply() const { return reply_; }
  size_t reply_length() const { return reply_length_; }

 private:
  void expire_if_due(uint32_t now_ms) {
    // Unsigned subtraction stays correct across the millis() wraparound after ~49.7 days.
    if (session_ && static_cast<uint32_t>(now_ms - last_command_ms_) >= FAILSAFE_MS) {
      outputs_ = 0;
      session_ = false;  // the next sender may start from any sequence number
      const char event[] = {'E', ' ', 'F', 'A', 'I', 'L', 'S', 'A', 'F', 'E'};
      append_line(event, sizeof(event));
    }
  }

  void handle_line(size_t length, uint32_t now_ms) {
    // Split "<body>*<two hex digits>" at the last '*'.
    size_t star = length;
    for (size_t i = length; i > 0; --i) {
      if (line_[i - 1] == '*') {
        star = i - 1;
        break;
      }
    }
    if (star == length || length - star != 3) {
      nack(false, 0, "SYNTAX");
      return;
    }
    int high = hex_value(line_[star + 1]);
    int low = hex_value(line_[star + 2]);
    if (high < 0 || low < 0) {
      nack(false, 0, "SYNTAX");
      return;
    }
    if (crc8(line_, star) != static_cast<uint8_t>(high * 16 + low)) {
      nack(false, 0, "CRC");  // the sequence number of a damaged line cannot be trusted
      return;
    }

    // Split the body at single spaces into at most three fields.
    const char *field[3];
    size_t field_length[3];
    size_t fields = 0;
    size_t start = 0;
    for (size_t i = 0; i <= star; ++i) {
      if (i == star || line_[i] == ' ') {
        if (fields == 3) {
          nack(false, 0, "SYNTAX");
          return;
        }
        field[fields] = line_ + start;
        field_length[fields] = i - start;
        ++fields;
        start = i + 1;
      }
    }
    uint16_t sequence = 0;
    if (fields < 2 || field_length[0] != 1 ||
        !parse_sequence(field[fields - 1], field_length[fields - 1], &sequence)) {
      nack(false, 0, "SYNTAX");
      return;
    }

    const char command = field[0][0];
    if (command == 'P' && fields == 2) {
      ack(sequence);  // a ping reports the state and deliberately does not feed the failsafe
      return;
    }
    uint8_t mask = 0;
    if (command != 'D' || fields != 3 || !parse_outputs(field[1], field_length[1], &mask)) {
      nack(true, sequence, "SYNTAX");
      return;
    }
    if (session_ && !sequence_newer(sequence, last_sequence_)) {
      nack(true, sequence, "SEQ");  // a duplicate or a stale command: keep the current outputs
      return;
    }
    outputs_ = mask;
    session_ = true;
    last_sequence_ = sequence;
    last_command_ms_ = now_ms;
    ack(sequence);
  }

  // "A <seq> <outputs>"
  void ack(uint16_t sequence) {
    char body[16];
    size_t n = 0;
    body[n++] = 'A';
    body[n++] = ' ';
    n += format_decimal(sequence, body + n);
    body[n++] = ' ';
    n += format_outputs(outputs_, body + n);
    append_line(body, n);
  }

  // "N <seq|-> <reason>"
  void nack(bool has_sequence, uint16_t sequence, const char *reason) {
    char body[20];
    size_t n = 0;
    body[n++] = 'N';
    body[n++] = ' ';
    if (has_sequence) {
      n += format_decimal(sequence, body + n);
    } else {
      body[n++] = '-';
    }
    body[n++] = ' ';
    while (*reason) body[n++] = *reason++;
    append_line(body, n);
  }

  static size_t format_decimal(uint16_t value, char *out) {
    char digits[5];
    size_t count = 0;
    do {
      digits[count++] = static_cast<char>('0' + value % 10);
      value = static_cast<uint16_t>(value / 10);
    } while (value != 0);
    for (size_t i = 0; i < count; ++i) out[i] = digits[count - 1 - i];
    return count;
  }

  // Append "<body>*<CRC as two upper-case hex digits>\n" to the reply buffer.
  void append_line(const char *body, size_t length) {
    static const char HEX_DIGITS[] = "0123456789ABCDEF";
    if (reply_length_ + length + 4 > MAX_REPLY) return;  // cannot happen with the replies above
    uint8_t crc = crc8(body, length);
    for (size_t i = 0; i < length; ++i) reply_[reply_length_++] = body[i];
    reply_[reply_length_++] = '*';
    reply_[reply_length_++] = HEX_DIGITS[crc >> 4];
    reply_[reply_length_++] = HEX_DIGITS[crc & 0x0F];
    reply_[reply_length_++] = '\n';
    reply_[reply_length_] = '\0';
  }

  char line_[MAX_LINE + 1];
  size_t line_length_;
  bool overflow_;
  uint8_t outputs_;
  bool session_;
  uint16_t last_sequence_;
  uint32_t last_command_ms_;
  char reply_[MAX_REPLY + 1];
  size_t reply_length_;
};

}  // namespace rc

#endif  // SCRATCHPILOT_RC_PROTOCOL_H
