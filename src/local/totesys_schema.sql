-- The ToteSys OLTP schema (docs/warehouse.md, "The source"). Statements are separated by blank lines;
-- every statement can run again on an existing database.

DO $$ BEGIN CREATE TYPE "PaymentTypeName" AS ENUM ('SALES_RECEIPT', 'SALES_REFUND', 'PURCHASE_PAYMENT', 'PURCHASE_REFUND'); EXCEPTION WHEN duplicate_object THEN NULL; END $$

DO $$ BEGIN CREATE TYPE "TransactionType" AS ENUM ('SALE', 'PURCHASE'); EXCEPTION WHEN duplicate_object THEN NULL; END $$

CREATE TABLE IF NOT EXISTS address (
    address_id serial PRIMARY KEY,
    address_line_1 text NOT NULL,
    address_line_2 text,
    district text,
    city text NOT NULL,
    postal_code text NOT NULL,
    country text NOT NULL,
    phone text NOT NULL,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS counterparty (
    counterparty_id serial PRIMARY KEY,
    counterparty_legal_name text NOT NULL,
    legal_address_id int NOT NULL REFERENCES address ON UPDATE CASCADE ON DELETE RESTRICT,
    commercial_contact text,
    delivery_contact text,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS currency (
    currency_id serial PRIMARY KEY,
    currency_code varchar(3) NOT NULL,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS department (
    department_id serial PRIMARY KEY,
    department_name text NOT NULL,
    location text,
    manager text,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS design (
    design_id serial PRIMARY KEY,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    design_name text NOT NULL,
    file_location text NOT NULL,
    file_name text NOT NULL,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS staff (
    staff_id serial PRIMARY KEY,
    first_name text NOT NULL,
    last_name text NOT NULL,
    department_id int NOT NULL REFERENCES department ON UPDATE CASCADE ON DELETE RESTRICT,
    email_address text NOT NULL,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS payment_type (
    payment_type_id serial PRIMARY KEY,
    payment_type_name "PaymentTypeName" NOT NULL,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS sales_order (
    sales_order_id serial PRIMARY KEY,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL,
    design_id int NOT NULL REFERENCES design ON UPDATE CASCADE ON DELETE RESTRICT,
    staff_id int NOT NULL REFERENCES staff ON UPDATE CASCADE ON DELETE RESTRICT,
    counterparty_id int NOT NULL REFERENCES counterparty ON UPDATE CASCADE ON DELETE RESTRICT,
    units_sold int NOT NULL,
    unit_price numeric(10, 2) NOT NULL,
    currency_id int NOT NULL REFERENCES currency ON UPDATE CASCADE ON DELETE RESTRICT,
    agreed_delivery_date text NOT NULL,
    agreed_payment_date text NOT NULL,
    agreed_delivery_location_id int NOT NULL REFERENCES address ON UPDATE CASCADE ON DELETE RESTRICT
)

CREATE TABLE IF NOT EXISTS purchase_order (
    purchase_order_id serial PRIMARY KEY,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL,
    staff_id int NOT NULL REFERENCES staff ON UPDATE CASCADE ON DELETE RESTRICT,
    counterparty_id int NOT NULL REFERENCES counterparty ON UPDATE CASCADE ON DELETE RESTRICT,
    item_code text NOT NULL,
    item_quantity int NOT NULL,
    item_unit_price numeric(10, 2) NOT NULL,
    currency_id int NOT NULL REFERENCES currency ON UPDATE CASCADE ON DELETE RESTRICT,
    agreed_delivery_date text NOT NULL,
    agreed_payment_date text NOT NULL,
    agreed_delivery_location_id int NOT NULL REFERENCES address ON UPDATE CASCADE ON DELETE RESTRICT
)

CREATE TABLE IF NOT EXISTS transaction (
    transaction_id serial PRIMARY KEY,
    transaction_type "TransactionType" NOT NULL,
    sales_order_id int UNIQUE REFERENCES sales_order ON UPDATE CASCADE ON DELETE SET NULL,
    purchase_order_id int UNIQUE REFERENCES purchase_order ON UPDATE CASCADE ON DELETE SET NULL,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL
)

CREATE TABLE IF NOT EXISTS payment (
    payment_id serial PRIMARY KEY,
    created_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_updated timestamp(3) NOT NULL,
    transaction_id int NOT NULL UNIQUE REFERENCES transaction ON UPDATE CASCADE ON DELETE RESTRICT,
    counterparty_id int NOT NULL REFERENCES counterparty ON UPDATE CASCADE ON DELETE RESTRICT,
    payment_amount numeric(10, 2) NOT NULL,
    currency_id int NOT NULL REFERENCES currency ON UPDATE CASCADE ON DELETE RESTRICT,
    payment_type_id int NOT NULL REFERENCES payment_type ON UPDATE CASCADE ON DELETE RESTRICT,
    paid boolean NOT NULL,
    payment_date text NOT NULL,
    company_ac_number int NOT NULL,
    counterparty_ac_number int NOT NULL
)
