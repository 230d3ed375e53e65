// scratchpilot_rc -- drive an RC car's remote control from serial commands, with a 250 ms failsafe.
//
// Four pins are wired to the remote's forward, reverse, left and right button contacts (see
// arduino/README.md for the wiring and the protocol). The protocol and the failsafe live in
// rc_protocol.h, which is unit-tested on the host; this file only moves bytes and pins.

#include "rc_protocol.h"

// ---- configuration ------------------------------------------------------------------------------
// Pins wired to the remote's button contacts.
const uint8_t PIN_FORWARD = 4;
const uint8_t PIN_REVERSE = 5;
const uint8_t PIN_LEFT = 6;
const uint8_t PIN_RIGHT = 7;
// The level that "presses" a button. Most toy remotes pull their button lines up and a press
// shorts them to ground, so LOW presses.
const uint8_t ACTIVE_LEVEL = LOW;
// true: a released pin floats (INPUT, high impedance), so the remote's own pull-up decides the
// level and the Arduino's 5 V never reaches a 3 V remote. false: a released pin drives the
// opposite of ACTIVE_LEVEL (for a transistor or opto-coupler stage that needs a defined level).
const bool RELEASE_AS_HIGH_IMPEDANCE = true;
const unsigned long BAUD_RATE = 115200;
// The on-board LED shows whether a drive session is live (lit) or the failsafe holds (dark).
const uint8_t PIN_STATUS_LED = LED_BUILTIN;
// -------------------------------------------------------------------------------------------------

static rc::Controller controller;
static uint8_t applied_outputs = 0xFF;  // forces the first applyOutputs() to touch every pin

static void setPin(uint8_t pin, bool pressed) {
  if (pressed) {
    digitalWrite(pin, ACTIVE_LEVEL);
    pinMode(pin, OUTPUT);
  } else if (RELEASE_AS_HIGH_IMPEDANCE) {
    pinMode(pin, INPUT);  // INPUT before LOW: never drive the line while switching
    digitalWrite(pin, LOW);  // and no internal pull-up
  } else {
    digitalWrite(pin, ACTIVE_LEVEL == LOW ? HIGH : LOW);
    pinMode(pin, OUTPUT);
  }
}

static void applyOutputs(uint8_t mask) {
  // The parser never accepts forward+reverse or left+right; refuse them here too, in case of a bug.
  if ((mask & rc::OUT_FORWARD) && (mask & rc::OUT_REVERSE)) mask = 0;
  if ((mask & rc::OUT_LEFT) && (mask & rc::OUT_RIGHT)) mask = 0;
  if (mask == applied_outputs) return;
  // Release before press so that a switch from forward to reverse never overlaps.
  if (!(mask & rc::OUT_FORWARD)) setPin(PIN_FORWARD, false);
  if (!(mask & rc::OUT_REVERSE)) setPin(PIN_REVERSE, false);
  if (!(mask & rc::OUT_LEFT)) setPin(PIN_LEFT, false);
  if (!(mask & rc::OUT_RIGHT)) setPin(PIN_RIGHT, false);
  if (mask & rc::OUT_FORWARD) setPin(PIN_FORWARD, true);
  if (mask & rc::OUT_REVERSE) setPin(PIN_REVERSE, true);
  if (mask & rc::OUT_LEFT) setPin(PIN_LEFT, true);
  if (mask & rc::OUT_RIGHT) setPin(PIN_RIGHT, true);
  applied_outputs = mask;
}

static void sendReply() {
  Serial.write(reinterpret_cast<const uint8_t *>(controller.reply()), controller.reply_length());
}

void setup() {
  applyOutputs(0);
  pinMode(PIN_STATUS_LED, OUTPUT);
  digitalWrite(PIN_STATUS_LED, LOW);
  Serial.begin(BAUD_RATE);
  controller.begin(millis());
  sendReply();
}

void loop() {
  // Read at most one buffer's worth per pass so a flood of bytes cannot starve the failsafe below.
  for (uint8_t budget = 64; budget > 0 && Serial.available() > 0; --budget) {
    int received = Serial.read();
    if (received < 0) break;
    if (controller.feed(static_cast<uint8_t>(received), millis())) sendReply();
    applyOutputs(controller.outputs());
  }
  if (controller.poll(millis())) sendReply();
  applyOutputs(controller.outputs());
  digitalWrite(PIN_STATUS_LED, controller.session_active() ? HIGH : LOW);
}
